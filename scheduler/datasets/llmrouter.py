"""Converter: LLMRouter's default routing data (6,108 queries x 9 open models, 7B-70B).

Source: ``llmrouter_9models/`` from https://github.com/ulab-uiuc/LLMRouter (MIT):
``dcrouter_preprocessed/{train,test}.json`` (question + per-model score),
``example_data/query_data/default_query_{train,test}.jsonl`` (question -> task name) and
``example_data/llm_candidates/default_llm.json`` (prices).

- **split**: LLMRouter's own (5,608 train / 500 test files).
- **ids**: ``llmrouter-<split>-<row index>`` (the data has no stable query id).
- **task**: ``task_name`` from the query file, joined on the exact question text; ``unknown`` if absent.
- **score**: the logged score in [0, 1] (mostly 0/1; F1 for natural_qa/trivia_qa, coverage for commongen).
- **cost rule**: the log has neither costs nor token counts, so ``cost_usd`` and ``output_tokens``
  are null and the prices from ``default_llm.json`` apply to the estimated prompt tokens plus the
  replay's assumed output length (see :mod:`scheduler.datasets.costing`).
"""
from __future__ import annotations

import json
from pathlib import Path

from scheduler.datasets.records import DatasetFormatError, ModelPrice, Outcome, OutcomeRecord, Split


def _load_json(path: Path) -> object:
    if not path.is_file():
        raise DatasetFormatError(f"{path}: missing (is SRC the llmrouter_9models folder?)")
    return json.loads(path.read_text(encoding="utf-8"))


def _task_by_question(src: Path, split: Split) -> dict[str, str]:
    path = src / "example_data" / "query_data" / f"default_query_{split.value}.jsonl"
    if not path.is_file():
        return {}
    tasks: dict[str, str] = {}
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                tasks.setdefault(row["query"], row.get("task_name") or "unknown")
    return tasks


def convert_llmrouter(src: str | Path) -> tuple[list[OutcomeRecord], dict[str, ModelPrice]]:
    """Read LLMRouter's files under ``src`` and return interchange records and the price table."""
    src = Path(src)
    candidates = _load_json(src / "example_data" / "llm_candidates" / "default_llm.json")
    if not isinstance(candidates, dict):
        raise DatasetFormatError(f"{src}: default_llm.json is not an object")
    records: list[OutcomeRecord] = []
    seen_models: set[str] = set()
    for split in Split:
        rows = _load_json(src / "dcrouter_preprocessed" / f"{split.value}.json")
        if not isinstance(rows, list):
            raise DatasetFormatError(f"{src}: dcrouter_preprocessed/{split.value}.json is not a list")
        tasks = _task_by_question(src, split)
        for i, row in enumerate(rows):
            outcomes = {m: Outcome(score=float(s)) for m, s in row["scores"].items() if s is not None}
            seen_models.update(outcomes)
            records.append(OutcomeRecord(
                id=f"llmrouter-{split.value}-{i:05d}",
                prompt=row["question"],
                task=tasks.get(row["question"], "unknown"),
                split=split,
                outcomes=outcomes,
            ))
    missing = seen_models - set(candidates)
    if missing:
        raise DatasetFormatError(f"{src}: no price in default_llm.json for {sorted(missing)}")
    prices = {
        m: ModelPrice(float(candidates[m]["input_price"]), float(candidates[m]["output_price"]))
        for m in sorted(seen_models)
    }
    return records, prices
