"""Read and write outcome datasets (``NAME.jsonl`` + ``NAME.models.json``) with line-level errors."""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from scheduler.datasets.records import (
    DatasetFormatError,
    ModelPrice,
    Outcome,
    OutcomeDataset,
    OutcomeRecord,
    Split,
)

_RECORD_KEYS = {"id", "prompt", "task", "split", "outcomes"}
_OUTCOME_KEYS = {"score", "cost_usd", "output_tokens", "response"}
_PRICE_KEYS = {"input_usd_per_mtok", "output_usd_per_mtok"}


def models_path_for(path: Path) -> Path:
    """``data/x.jsonl`` -> ``data/x.models.json`` (the default price-table location)."""
    return path.with_name(path.name.removesuffix(".jsonl") + ".models.json")


def _number(value: Any, where: str, *, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DatasetFormatError(f"{where}: expected a finite number, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise DatasetFormatError(f"{where}: {value!r} is outside [{lo}, {hi}]")
    return float(value)


def parse_outcome(raw: Any, where: str) -> Outcome:
    if not isinstance(raw, dict):
        raise DatasetFormatError(f"{where}: an outcome must be an object, got {type(raw).__name__}")
    unknown = set(raw) - _OUTCOME_KEYS
    if unknown:
        raise DatasetFormatError(f"{where}: unknown outcome keys {sorted(unknown)}")
    if "score" not in raw:
        raise DatasetFormatError(f"{where}: missing 'score'")
    cost = raw.get("cost_usd")
    tokens = raw.get("output_tokens")
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0):
        raise DatasetFormatError(f"{where}.output_tokens: expected an int >= 0 or null, got {tokens!r}")
    response = raw.get("response")
    if response is not None and not isinstance(response, str):
        raise DatasetFormatError(
            f"{where}.response: expected the answer text (a string) or null, got {type(response).__name__} "
            f"{_short(response)}"
        )
    return Outcome(
        score=_number(raw["score"], f"{where}.score", lo=0.0, hi=1.0),
        cost_usd=None if cost is None else _number(cost, f"{where}.cost_usd", lo=0.0),
        output_tokens=tokens,
        response=response,
    )


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def parse_record(raw: Any, where: str) -> OutcomeRecord:
    """Validate one decoded JSONL line; ``where`` names it in errors (file:line)."""
    if not isinstance(raw, dict):
        raise DatasetFormatError(f"{where}: a record must be a JSON object")
    missing = _RECORD_KEYS - set(raw)
    if missing:
        raise DatasetFormatError(f"{where}: missing keys {sorted(missing)}")
    for key in ("id", "prompt", "task"):
        if not isinstance(raw[key], str):
            raise DatasetFormatError(f"{where}.{key}: expected a string, got {raw[key]!r}")
    try:
        split = Split(raw["split"])
    except ValueError:
        raise DatasetFormatError(f"{where}.split: expected 'train' or 'test', got {raw['split']!r}") from None
    outcomes = raw["outcomes"]
    if not isinstance(outcomes, dict) or not outcomes:
        raise DatasetFormatError(f"{where}.outcomes: expected a non-empty object of model -> outcome")
    return OutcomeRecord(
        id=raw["id"],
        prompt=raw["prompt"],
        task=raw["task"],
        split=split,
        outcomes={str(m): parse_outcome(o, f"{where} (id {raw['id']!r}).outcomes[{m!r}]")
                  for m, o in outcomes.items()},
    )


def parse_prices(raw: Any, where: str) -> dict[str, ModelPrice]:
    if not isinstance(raw, dict):
        raise DatasetFormatError(f"{where}: expected an object of model -> prices")
    prices: dict[str, ModelPrice] = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict) or set(entry) - _PRICE_KEYS:
            raise DatasetFormatError(f"{where}[{name!r}]: expected keys {sorted(_PRICE_KEYS)}")
        vals = {
            k: None if entry.get(k) is None else _number(entry[k], f"{where}[{name!r}].{k}", lo=0.0)
            for k in _PRICE_KEYS
        }
        prices[str(name)] = ModelPrice(**vals)
    return prices


def read_dataset(path: str | Path, models_path: str | Path | None = None) -> OutcomeDataset:
    """Read and validate a dataset; the price table defaults to ``NAME.models.json`` if it exists."""
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(f"{path}: no such file")
    records: list[OutcomeRecord] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetFormatError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            records.append(parse_record(raw, f"{path}:{lineno}"))
    mpath = Path(models_path) if models_path is not None else models_path_for(path)
    prices: dict[str, ModelPrice] = {}
    if mpath.is_file():
        try:
            prices = parse_prices(json.loads(mpath.read_text(encoding="utf-8")), str(mpath))
        except json.JSONDecodeError as exc:
            raise DatasetFormatError(f"{mpath}: not valid JSON ({exc.msg})") from exc
    elif models_path is not None:
        raise DatasetFormatError(f"{mpath}: no such file")
    dataset = OutcomeDataset(name=path.name.removesuffix(".jsonl"), records=tuple(records), prices=prices)
    dataset.validate()
    return dataset


def outcome_to_json(out: Outcome) -> dict[str, Any]:
    """One outcome as written; ``response`` only when logged, so sets without answers stay as
    they were (and readable by readers that predate the field)."""
    raw: dict[str, Any] = {"score": out.score, "cost_usd": out.cost_usd, "output_tokens": out.output_tokens}
    if out.response is not None:
        raw["response"] = out.response
    return raw


def record_to_json(rec: OutcomeRecord) -> dict[str, Any]:
    return {
        "id": rec.id,
        "prompt": rec.prompt,
        "task": rec.task,
        "split": rec.split.value,
        "outcomes": {m: outcome_to_json(o) for m, o in rec.outcomes.items()},
    }


def write_dataset(
    path: str | Path, records: Iterable[OutcomeRecord], prices: Mapping[str, ModelPrice]
) -> OutcomeDataset:
    """Validate and write ``path`` (JSONL) and its ``.models.json`` next to it; returns the dataset."""
    path = Path(path)
    dataset = OutcomeDataset(name=path.name.removesuffix(".jsonl"), records=tuple(records), prices=dict(prices))
    dataset.validate()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for rec in dataset.records:
            fh.write(json.dumps(record_to_json(rec), ensure_ascii=False) + "\n")
    table = {
        m: {"input_usd_per_mtok": p.input_usd_per_mtok, "output_usd_per_mtok": p.output_usd_per_mtok}
        for m, p in dataset.prices.items()
    }
    models_path_for(path).write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    return dataset
