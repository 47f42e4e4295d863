"""Build the predictor's training matrix from labelled job history and imported outcome data.

Pure. Rows are prompts; columns are models; a cell is the observed score, nan where that model
was not observed on that prompt (history observes only the model that ran: bandit feedback).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scheduler.datasets.records import OutcomeRecord
from scheduler.storage.labels import LabelledOutcome


@dataclass(frozen=True)
class TrainingSet:
    prompts: list[str]
    scores: np.ndarray              # (N, M), nan = unobserved
    output_tokens: np.ndarray       # (N, M), nan = unknown
    model_names: list[str]
    # Per row, a category label the predictor may use as a prior. Production jobs carry none, so
    # production builds leave it None; the replay passes each record's task (``--use-task``).
    tasks: list[str] | None = None

    @property
    def num_labels(self) -> int:
        return int((~np.isnan(self.scores)).sum())


def training_set(history: Sequence[LabelledOutcome], records: Sequence[OutcomeRecord] = ()) -> TrainingSet:
    """Merge both sources; the same prompt run on several models becomes one row."""
    models = sorted({h.model for h in history} | {m for r in records for m in r.outcomes})
    column = {name: j for j, name in enumerate(models)}
    row_of: dict[str, int] = {}
    cells: list[tuple[int, int, float, float]] = []

    def row(prompt: str) -> int:
        return row_of.setdefault(prompt, len(row_of))

    for record in records:
        for model, outcome in record.outcomes.items():
            tokens = np.nan if outcome.output_tokens is None else float(outcome.output_tokens)
            cells.append((row(record.prompt), column[model], outcome.score, tokens))
    for label in reversed(history):  # history is newest first; apply oldest first
        tokens = np.nan if label.output_tokens is None else float(label.output_tokens)
        cells.append((row(label.prompt_text), column[label.model], label.score, tokens))
    scores = np.full((len(row_of), len(models)), np.nan)
    output_tokens = np.full_like(scores, np.nan)
    for i, j, score, tokens in cells:   # later cells (newer history) win on repeats
        scores[i, j] = score
        output_tokens[i, j] = tokens
    return TrainingSet(list(row_of), scores, output_tokens, models)
