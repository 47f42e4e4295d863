"""The outcome-dataset interchange format: how several models did on the same queries.

One query per line of ``NAME.jsonl``::

    {"id": str, "prompt": str, "task": str, "split": "train" | "test",
     "outcomes": {MODEL: {"score": float in [0, 1], "cost_usd": float | null,
                          "output_tokens": int | null, "response": str | null}}}

and one price table per dataset in ``NAME.models.json``::

    {MODEL: {"input_usd_per_mtok": float | null, "output_usd_per_mtok": float | null}}

A model missing from a query's ``outcomes`` was not observed on it (training treats it as
unknown; replay scores a test query only when every model was observed). ``cost_usd`` null means
"derive it from the prices and token counts" (see :mod:`scheduler.datasets.costing`).
``response`` (optional; absent in older files and in sets that log no answers) is the model's raw
answer text, which post-hoc quality estimation (:mod:`scheduler.predictor.posthoc`) reads; null
and absent both mean "not logged".
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from scheduler.errors import InvalidRequest


class DatasetFormatError(InvalidRequest):
    """The outcome dataset is not in the Switchyard interchange format."""


class Split(str, enum.Enum):
    TRAIN = "train"
    TEST = "test"


@dataclass(frozen=True)
class Outcome:
    """What one model did on one query."""

    score: float                      # 0..1: 1 = correct (or an F1/coverage-style partial credit)
    cost_usd: float | None = None     # realised cost of this call, when the log has it
    output_tokens: int | None = None  # tokens the model generated, when known
    response: str | None = None       # the model's raw answer text, when the log has it


@dataclass(frozen=True)
class OutcomeRecord:
    """One query and every observed model outcome on it."""

    id: str
    prompt: str
    task: str
    split: Split
    outcomes: dict[str, Outcome]


@dataclass(frozen=True)
class ModelPrice:
    """Per-token list price of a model in USD per million tokens (None = unknown)."""

    input_usd_per_mtok: float | None = None
    output_usd_per_mtok: float | None = None

    @property
    def known(self) -> bool:
        return self.input_usd_per_mtok is not None and self.output_usd_per_mtok is not None


@dataclass(frozen=True)
class OutcomeDataset:
    """A whole outcome dataset: records in file order plus the price table."""

    name: str
    records: tuple[OutcomeRecord, ...]
    prices: dict[str, ModelPrice] = field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        """Every model observed anywhere, in order of first appearance."""
        seen: dict[str, None] = {}
        for rec in self.records:
            for name in rec.outcomes:
                seen.setdefault(name, None)
        return list(seen)

    def split(self, split: Split | str) -> list[OutcomeRecord]:
        wanted = Split(split)
        return [rec for rec in self.records if rec.split is wanted]

    def validate(self) -> None:
        """Check cross-record rules: unique ids, both splits present, a cost rule for every model."""
        ids: set[str] = set()
        for rec in self.records:
            if rec.id in ids:
                raise DatasetFormatError(f"{self.name}: duplicate id {rec.id!r}")
            ids.add(rec.id)
        for wanted in Split:
            if not any(rec.split is wanted for rec in self.records):
                raise DatasetFormatError(f"{self.name}: no {wanted.value!r} records")
        unpriced = {
            name
            for rec in self.records
            for name, out in rec.outcomes.items()
            if out.cost_usd is None and not self.prices.get(name, ModelPrice()).known
        }
        if unpriced:
            raise DatasetFormatError(
                f"{self.name}: models {sorted(unpriced)} have outcomes with cost_usd null but no "
                "input/output price in the models file; give cost_usd or the prices"
            )
