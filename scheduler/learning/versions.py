"""Fitted predictors (and the answer judge and cascade model beside them) on disk, one file per
version; the newest is the one in use.

The tick checks for a newer version each tick (a directory listing) and swaps it in between
ticks, so refitting never stops scheduling.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from scheduler.predictor import Predictor, PredictorError, load_predictor

log = logging.getLogger(__name__)

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


T = TypeVar("T")


class PickledVersions(Generic[T]):
    """Fitted artifacts of one kind beside the predictor's versions, one pickle per version
    (``{prefix}{version}.pkl``, a magic string inside so a stray file is refused); the newest is
    the one in use. Only load files this Switchyard wrote: they are pickles."""

    def __init__(self, directory: Path, prefix: str, what: str, accepts: Callable[[object], bool]) -> None:
        self.directory = directory
        self.prefix = prefix
        self.what = what          # e.g. "answer judge", for messages
        self.accepts = accepts    # whether an unpickled object is one of these
        self.magic = f"switchyard-{what.replace(' ', '-')}"

    def save(self, artifact: T, now: dt.datetime) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        version = now.strftime("%Y%m%dT%H%M%S%fZ")
        temporary = self.directory / f".{self.prefix}{version}{SUFFIX}.tmp"
        temporary.write_bytes(pickle.dumps({"magic": self.magic, "artifact": artifact},
                                           protocol=pickle.HIGHEST_PROTOCOL))
        os.replace(temporary, self.path(version))
        return version

    def latest(self) -> str | None:
        if not self.directory.is_dir():
            return None
        versions = sorted(p.name[len(self.prefix):-len(SUFFIX)] for p in self.directory.glob(f"{self.prefix}*{SUFFIX}"))
        return versions[-1] if versions else None

    def load(self, version: str) -> T:
        path = self.path(version)
        try:
            blob = pickle.loads(path.read_bytes())
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
            raise PredictorError(f"{path}: not a readable {self.what} file ({exc})") from exc
        if not isinstance(blob, dict) or blob.get("magic") != self.magic or not self.accepts(blob.get("artifact")):
            raise PredictorError(f"{path}: not a Switchyard {self.what} file")
        artifact: T = blob["artifact"]
        return artifact

    def path(self, version: str) -> Path:
        return self.directory / f"{self.prefix}{version}{SUFFIX}"


class Newest(Generic[T]):
    """The newest version in ``versions``, loaded once when it appears (a directory listing per
    call); one that cannot be read is said once and the previous one kept."""

    def __init__(self, versions: PickledVersions[T]) -> None:
        self.versions = versions
        self._loaded: tuple[str, T] | None = None
        self._unreadable: str | None = None

    def get(self) -> tuple[T | None, str | None]:
        """(the artifact, its version), or (None, None) before any was saved."""
        version = self.versions.latest()
        current = self._loaded[0] if self._loaded else None
        if version is not None and version not in (current, self._unreadable):
            try:
                self._loaded = (version, self.versions.load(version))
                log.info("%s version %s loaded", self.versions.what, version)
            except PredictorError as exc:
                self._unreadable = version
                log.warning("keeping the previous %s: %s", self.versions.what, exc)
        return (self._loaded[1], self._loaded[0]) if self._loaded else (None, None)
