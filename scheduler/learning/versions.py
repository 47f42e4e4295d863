"""Fitted predictors on disk, one file per version; the newest is the one in use.

The tick checks for a newer version each tick (a directory listing) and swaps it in between
ticks, so refitting never stops scheduling.
"""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from scheduler.predictor import Predictor, load_predictor

PREFIX, SUFFIX = "predictor-", ".pkl"


class PredictorVersions:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def save(self, predictor: Predictor, now: dt.datetime) -> str:
        """Write a new version atomically; returns its version string (sortable by time)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        version = now.strftime("%Y%m%dT%H%M%S%fZ")
        temporary = self.directory / f".{PREFIX}{version}{SUFFIX}.tmp"
        predictor.save(temporary)
        os.replace(temporary, self.path(version))
        return version

    def latest(self) -> str | None:
        if not self.directory.is_dir():
            return None
        versions = sorted(p.name[len(PREFIX):-len(SUFFIX)] for p in self.directory.glob(f"{PREFIX}*{SUFFIX}"))
        return versions[-1] if versions else None

    def load(self, version: str) -> Predictor:
        return load_predictor(self.path(version))

    def path(self, version: str) -> Path:
        return self.directory / f"{PREFIX}{version}{SUFFIX}"
