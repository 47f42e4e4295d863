"""Keeps the tick's predictor current: loads the newest fitted version, refits when enough new
labels have arrived (in a background thread, so the tick never waits for a fit)."""
from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Sequence

import numpy as np

from scheduler.datasets.records import OutcomeRecord
from scheduler.fleet import Fleet
from scheduler.learning.exploration import Exploration, Feedback, promise_gap
from scheduler.learning.fleet_predictor import FleetPredictor, PredictionCache
from scheduler.learning.training import TrainingSet, training_set
from scheduler.learning.versions import PredictorVersions
from scheduler.predictor import Predictor, PredictorError, make_predictor
from scheduler.settings import Settings
from scheduler.storage import Database
from scheduler.storage.labels import LabelStore

log = logging.getLogger(__name__)


def fit_predictor(kind: str, data: TrainingSet) -> Predictor:
    """Fit ``kind`` on the models with at least one observed outcome."""
    observed = [j for j in range(len(data.model_names)) if (~np.isnan(data.scores[:, j])).any()]
    if len(data.prompts) < 2 or not observed:
        raise PredictorError(f"not enough labelled outcomes to fit ({data.num_labels} labels)")
    return make_predictor(kind).fit(data.prompts, data.scores[:, observed], data.output_tokens[:, observed],
                                    [data.model_names[j] for j in observed])


class Learner:
    def __init__(self, settings: Settings, db: Database, fleet: Fleet) -> None:
        self.settings = settings
        self.fleet = fleet
        self.labels = LabelStore(db)
        self.versions = PredictorVersions(settings.predictor_dir)
        self._loaded: tuple[str, Predictor] | None = None
        self._unreadable: str | None = None   # the newest version, when it could not be loaded
        self._last_fit_at: dt.datetime | None = None
        self._fitting: threading.Thread | None = None
        self._cache = PredictionCache(max_jobs=4 * settings.window_max_jobs)

    def predictor(self) -> FleetPredictor:
        """The newest fitted version (reloaded only when a new one appears), adapted to the fleet."""
        version = self.versions.latest()
        current = self._loaded[0] if self._loaded else None
        if version is not None and version not in (current, self._unreadable):
            try:
                self._loaded = (version, self.versions.load(version))
                log.info("predictor version %s loaded", version)
            except PredictorError as exc:   # e.g. written by an older format: said once, not every tick
                self._unreadable = version
                log.warning("keeping the previous predictor: %s", exc)
        fitted = self._loaded[1] if self._loaded else None
        return FleetPredictor(self.fleet, fitted, self._loaded[0] if self._loaded else None, self._cache)

    def exploration(self) -> Exploration | None:
        if self.settings.exploration_target_labels <= 0 or self.settings.exploration_budget_fraction <= 0:
            return None
        return Exploration(self.settings.exploration_budget_fraction, self.settings.exploration_target_labels)

    def feedback(self) -> Feedback:
        """Labels per fleet model and the promise gap of the recent ones, read fresh each tick.

        A model's labels are what the scheduler knows about it: its feedback labels, or, when
        more, the outcomes the loaded predictor was fitted on (an imported dataset counts; the
        larger of the two, since a fit on history includes the feedback it had then)."""
        feedback = self.labels.counts_by_model()
        fitted_on = self._loaded[1].label_counts if self._loaded else {}
        counts = tuple(max(feedback.get(name, 0), fitted_on.get(name, 0)) for name in self.fleet.names)
        gap = 0.0
        if self.settings.promise_check_labels > 0:
            gap = promise_gap(*self.labels.recent_promises(self.settings.promise_check_labels))
        return Feedback(counts, gap)

    def refit(self, now: dt.datetime, records: Sequence[OutcomeRecord] = ()) -> str:
        """Fit on all labelled history (+ ``records``) and save a new version; returns it."""
        data = training_set(self.labels.history(), records)
        predictor = fit_predictor(self.settings.predictor_kind, data)
        version = self.versions.save(predictor, now)
        self._last_fit_at = now
        log.info("predictor version %s fitted on %d labels", version, data.num_labels)
        return version

    def refit_in_background_if_due(self, now: dt.datetime) -> bool:
        if self._fitting is not None and self._fitting.is_alive():
            return False
        if self._last_fit_at is not None and (now - self._last_fit_at).total_seconds() < self.settings.refit_min_interval_s:
            return False
        if self.labels.count_since(self._last_fit_at) < self.settings.refit_min_new_labels:
            return False
        self._last_fit_at = now  # a failing fit waits out the interval too

        def fit() -> None:
            try:
                self.refit(now)
            except Exception:  # noqa: BLE001 - keep scheduling with the current predictor
                log.exception("refitting the predictor failed")

        self._fitting = threading.Thread(target=fit, name="switchyard-refit", daemon=True)
        self._fitting.start()
        return True
