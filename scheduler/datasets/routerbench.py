"""Converter: the RouterBench 0-shot subset re-split by RouterDC (ARC-Challenge, MBPP, Winogrande).

Source: ``routerbench_subset_routerdc/routerbench_zs/{arc_challenge,mbpp,winograde}_{train,test}.csv``
(RouterBench, Hu et al. 2024, arXiv:2403.12031; split by RouterDC). Research-use data: attribute
RouterBench when you publish numbers on it.

- **split**: RouterDC's own, from the file name (``*_train.csv`` / ``*_test.csv``).
- **ids**: ``sample_id``; 14 ARC sample ids occur twice (two rows each observing different models,
  sometimes one in train and one in test), so a duplicated id gets ``#<csv row index>`` appended
  and both rows are kept as they are.
- **score**: the 0/1 correctness column; an empty/NaN cell means the model was not observed on that
  row and is left out of ``outcomes``.
- **cost rule**: ``cost_usd`` = the logged ``M|total_cost`` (input + output tokens x the model's 2024
  API price). ``output_tokens`` is *estimated* from the logged response text (~4 chars/token).
  The price table below is RouterBench's; it reproduces the logged costs.
- **response**: the logged ``M|model_response``, unwrapped from its list literal and otherwise as
  logged (trailing newlines kept); null where the cell is empty.
"""
from __future__ import annotations

import ast
import csv
import math
import sys
from collections import Counter
from pathlib import Path

from scheduler.datasets.costing import estimate_tokens
from scheduler.datasets.records import DatasetFormatError, ModelPrice, Outcome, OutcomeRecord, Split

# USD per million tokens (input, output), as RouterBench priced each model in 2024.
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4-1106-preview": (10.0, 30.0),
    "gpt-3.5-turbo-1106": (1.0, 2.0),
    "claude-v2": (8.0, 24.0),
    "claude-v1": (8.0, 24.0),
    "claude-instant-v1": (0.8, 2.4),
    "meta/llama-2-70b-chat": (0.9, 0.9),
    "mistralai/mixtral-8x7b-chat": (0.6, 0.6),
    "zero-one-ai/Yi-34B-Chat": (0.8, 0.8),
    "meta/code-llama-instruct-34b-chat": (0.776, 0.776),
    "WizardLM/WizardLM-13B-V1.2": (0.3, 0.3),
    "mistralai/mistral-7b-chat": (0.2, 0.2),
}
_META_COLUMNS = {"", "sample_id", "prompt", "eval_name", "oracle_model_to_route_to"}


def _unwrap(cell: str) -> str:
    """RouterBench stores prompts/responses as a Python list literal, e.g. "['text']"."""
    try:
        value = ast.literal_eval(cell)
    except (ValueError, SyntaxError):
        return cell
    if isinstance(value, (list, tuple)):
        return "\n".join(str(v) for v in value)
    return str(value)


def _float_or_none(cell: str | None) -> float | None:
    if cell is None or cell.strip() == "":
        return None
    value = float(cell)
    return None if math.isnan(value) else value


def _csv_files(src: Path) -> list[Path]:
    files = sorted(src.glob("*_train.csv")) + sorted(src.glob("*_test.csv"))
    if not files and (src / "routerbench_zs").is_dir():
        return _csv_files(src / "routerbench_zs")
    if not files:
        raise DatasetFormatError(f"{src}: no RouterBench *_train.csv / *_test.csv files found")
    return files


def convert_routerbench(src: str | Path) -> tuple[list[OutcomeRecord], dict[str, ModelPrice]]:
    """Read the RouterDC CSVs under ``src`` and return interchange records and the price table."""
    csv.field_size_limit(sys.maxsize)
    rows: list[tuple[Split, dict[str, str]]] = []
    for path in _csv_files(Path(src)):
        split = Split.TEST if path.stem.endswith("_test") else Split.TRAIN
        with path.open(newline="", encoding="utf-8") as fh:
            rows.extend((split, row) for row in csv.DictReader(fh))
    if not rows:
        raise DatasetFormatError(f"{src}: the RouterBench CSVs are empty")
    models = [c for c in rows[0][1] if c not in _META_COLUMNS and "|" not in c]
    unknown = set(models) - set(PRICES)
    if unknown:
        raise DatasetFormatError(f"{src}: models without a known RouterBench price: {sorted(unknown)}")
    id_counts = Counter(row["sample_id"] for _, row in rows)
    records = []
    for split, row in rows:
        outcomes = {}
        for m in models:
            score = _float_or_none(row.get(m))
            if score is None:
                continue
            cell = row.get(f"{m}|model_response") or ""
            response = _unwrap(cell) if cell else None
            outcomes[m] = Outcome(
                score=score,
                cost_usd=_float_or_none(row.get(f"{m}|total_cost")),
                output_tokens=estimate_tokens(response) if response is not None else None,
                response=response,
            )
        if not outcomes:
            continue
        rid = row["sample_id"]
        if id_counts[rid] > 1:
            rid = f"{rid}#{row['']}"
        records.append(OutcomeRecord(rid, _unwrap(row["prompt"]), row["eval_name"], split, outcomes))
    prices = {m: ModelPrice(*PRICES[m]) for m in models}
    return records, prices
