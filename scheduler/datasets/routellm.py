"""Converters: RouteLLM's evaluation logs for MMLU and GSM8K (GPT-4-1106 vs Mixtral-8x7B).

Source: ``routellm/evals/`` from https://github.com/lm-sys/RouteLLM (Apache-2.0; Ong et al.,
arXiv:2406.18665): ``mmlu/responses/mmlu_<subject>.csv`` (57 files, 14,042 rows) and
``gsm8k/gsm8k_responses.csv`` (1,319 rows).

- **split**: RouteLLM ships none, so each record gets a *seeded deterministic* split
  (:func:`scheduler.datasets.splitting.hashed_split`: 30% test, seed 0, on the record id).
- **ids**: ``mmlu-<subject>-<row>`` / ``gsm8k-<row>`` (row = 0-based data row in the CSV).
- **task**: ``mmlu_<subject>`` / ``gsm8k``.
- **score**: 1.0 if the CSV says ``True`` else 0.0.
- **cost rule**: no costs are logged; prices are RouteLLM's blended per-token prices (GPT-4
  $24.7/M, Mixtral $0.24/M, the same for input and output). GSM8K's ``output_tokens`` are
  *estimated* from the logged responses (~4 chars/token); MMLU has no responses, so its output
  tokens are null and replay's assumed output length applies.
- **response**: GSM8K's ``<model>_response`` columns, as logged (null where empty); MMLU logs none.
- RouteLLM's ``contaminated_prompts.jsonl`` lists prompts that overlap *RouteLLM's* router training
  data; nothing here trains on that data, so those rows are kept.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

from scheduler.datasets.costing import estimate_tokens
from scheduler.datasets.records import DatasetFormatError, ModelPrice, Outcome, OutcomeRecord
from scheduler.datasets.splitting import DEFAULT_SPLIT_SEED, DEFAULT_TEST_FRACTION, hashed_split

GPT4 = "gpt-4-1106-preview"
MIXTRAL = "mistralai/Mixtral-8x7B-Instruct-v0.1"
# RouteLLM's blended $/M tokens (input = output), as used in its cost accounting.
PRICES = {GPT4: ModelPrice(24.7, 24.7), MIXTRAL: ModelPrice(0.24, 0.24)}


def _evals_dir(src: Path, sub: str) -> Path:
    for cand in (src / sub, src / "evals" / sub, src):
        if (cand / "responses").is_dir() or (cand / "gsm8k_responses.csv").is_file():
            return cand
    raise DatasetFormatError(f"{src}: no RouteLLM evals/{sub} folder found (is SRC the routellm folder?)")


def _bool_score(cell: str, where: str) -> float:
    value = cell.strip().lower()
    if value not in ("true", "false"):
        raise DatasetFormatError(f"{where}: expected True/False, got {cell!r}")
    return 1.0 if value == "true" else 0.0


def convert_routellm_mmlu(
    src: str | Path, *, test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = DEFAULT_SPLIT_SEED
) -> tuple[list[OutcomeRecord], dict[str, ModelPrice]]:
    """Read the 57 MMLU response CSVs under ``src`` (the routellm folder or its evals/mmlu)."""
    folder = _evals_dir(Path(src), "mmlu") / "responses"
    files = sorted(folder.glob("mmlu_*.csv"))
    if not files:
        raise DatasetFormatError(f"{folder}: no mmlu_*.csv files")
    records = []
    for path in files:
        subject = path.stem.removeprefix("mmlu_")
        with path.open(newline="", encoding="utf-8") as fh:
            for i, row in enumerate(csv.DictReader(fh)):
                rid = f"mmlu-{subject}-{i}"
                where = f"{path.name} row {i}"
                outcomes = {m: Outcome(score=_bool_score(row[m], where)) for m in (GPT4, MIXTRAL)}
                split = hashed_split(rid, test_fraction=test_fraction, seed=seed)
                records.append(OutcomeRecord(rid, row["prompt"], f"mmlu_{subject}", split, outcomes))
    return records, dict(PRICES)


def convert_routellm_gsm8k(
    src: str | Path, *, test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = DEFAULT_SPLIT_SEED
) -> tuple[list[OutcomeRecord], dict[str, ModelPrice]]:
    """Read ``gsm8k_responses.csv`` under ``src`` (the routellm folder or its evals/gsm8k)."""
    csv.field_size_limit(sys.maxsize)
    path = _evals_dir(Path(src), "gsm8k") / "gsm8k_responses.csv"
    records = []
    with path.open(newline="", encoding="utf-8") as fh:
        for i, row in enumerate(csv.DictReader(fh)):
            rid = f"gsm8k-{i}"
            outcomes = {
                m: Outcome(
                    score=_bool_score(row[m], f"{path.name} row {i}"),
                    output_tokens=estimate_tokens(row.get(f"{m}_response") or ""),
                    response=row.get(f"{m}_response") or None,
                )
                for m in (GPT4, MIXTRAL)
            }
            split = hashed_split(rid, test_fraction=test_fraction, seed=seed)
            records.append(OutcomeRecord(rid, row["prompt"], "gsm8k", split, outcomes))
    return records, dict(PRICES)
