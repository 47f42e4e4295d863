"""The outcome data a deployment imported, kept for every later refit.

``switchyard predictor fit --dataset FILE`` teaches the predictor (and with ``--cascade`` the
cascade model and the answer judge) from outcome data beside the job history. The scheduler's
background refits run later, without the command's files: if they learnt from the job history
alone, a predictor fitted on thousands of imported outcomes would be replaced by one fitted on
the first few hundred labels. So the imported records are kept in the predictor directory
(``imported-outcomes.jsonl``, the interchange format's records) and every refit reads them; a new
``predictor fit --dataset`` replaces them.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from scheduler.datasets.io import parse_record, record_to_json
from scheduler.datasets.records import OutcomeRecord

FILE_NAME = "imported-outcomes.jsonl"


class ImportedOutcomes:
    def __init__(self, directory: Path) -> None:
        self.path = directory / FILE_NAME

    def replace(self, records: Sequence[OutcomeRecord]) -> None:
        """Keep ``records`` as the imported outcome data (written whole, then renamed into place)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".jsonl.partial")
        with partial.open("w", encoding="utf-8") as fh:
            for record in records:
                fh.write(json.dumps(record_to_json(record), ensure_ascii=False) + "\n")
        os.replace(partial, self.path)

    def load(self) -> list[OutcomeRecord]:
        """The imported records ([] when none were imported), read afresh for each fit: a refit is
        rare, and the scheduler should not hold a large import in memory between refits."""
        try:
            with self.path.open(encoding="utf-8") as fh:
                return [parse_record(json.loads(line), f"{self.path}:{number}")
                        for number, line in enumerate(fh, 1) if line.strip()]
        except FileNotFoundError:
            return []
