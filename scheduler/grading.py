"""Built-in graders: score a model's answer against a reference answer, 0..1.

For eval-like workloads a job may carry a ``reference``; the worker grades the answer when it
writes the result, and the grade becomes the job's outcome label for learning (an explicit
``POST /v1/jobs/{id}/feedback`` score overrides it).
"""
from __future__ import annotations

import enum
import re

_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")
_CHOICE = re.compile(r"\b([A-J])\b")


class Grader(str, enum.Enum):
    EXACT = "exact"        # the whole answer equals the reference (case and outer punctuation ignored)
    CONTAINS = "contains"  # the reference appears in the answer (case-insensitive)
    NUMERIC = "numeric"    # the last number in the answer equals the reference number
    CHOICE = "choice"      # the first standalone choice letter (A-J) equals the reference letter


def grade(answer: str, reference: str, grader: Grader) -> float:
    if grader is Grader.EXACT:
        return float(_normalise(answer) == _normalise(reference))
    if grader is Grader.CONTAINS:
        return float(_normalise(reference) in _normalise(answer))
    if grader is Grader.NUMERIC:
        return float(_same_number(_last_number(answer), _last_number(reference)))
    found = _CHOICE.search(answer.upper())
    return float(found is not None and found.group(1) == reference.strip().upper()[:1])


def _normalise(text: str) -> str:
    return " ".join(text.lower().split()).strip(" .!?\"'")


def _last_number(text: str) -> float | None:
    numbers = _NUMBER.findall(text)
    return float(numbers[-1].replace(",", "")) if numbers else None


def _same_number(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and abs(a - b) <= 1e-6 * max(1.0, abs(b))
