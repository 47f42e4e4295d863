"""Keeps the tick's predictor and the review's answer judge current: loads the newest fitted
version of each, refits both when enough new labels have arrived (in a background thread, so the
tick never waits for a fit).

The answer judge (scheduler/judging.py) learns from the same labels as the ex-ante predictor:
every scored attempt carries the answer it scored (``LabelStore.history``), so a cascade's
answers, graded against references or fed back, teach it in production as outcomes teach the
predictor. Its versions are kept beside the predictor's (``judge-<version>.pkl``)."""
from __future__ import annotations

import datetime as dt
import logging
import os
import pickle
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from scheduler.judging import AnswerJudge
from scheduler.datasets.records import OutcomeRecord
from scheduler.fleet import Fleet
from scheduler.learning.judge import fit_posthoc_judge
from scheduler.learning.exploration import Exploration, Feedback, promise_gap
from scheduler.learning.fleet_predictor import FleetPredictor, PredictionCache
from scheduler.learning.training import TrainingSet, training_set
from scheduler.learning.versions import PredictorVersions
from scheduler.predictor import Predictor, PredictorError, make_predictor
from scheduler.settings import Settings
from scheduler.storage import Database
from scheduler.storage.labels import LabelledOutcome, LabelStore

log = logging.getLogger(__name__)


def fit_predictor(kind: str, data: TrainingSet) -> Predictor:
    """Fit ``kind`` on the models with at least one observed outcome."""
    observed = [j for j in range(len(data.model_names)) if (~np.isnan(data.scores[:, j])).any()]
    if len(data.prompts) < 2 or not observed:
        raise PredictorError(f"not enough labelled outcomes to fit ({data.num_labels} labels)")
    return make_predictor(kind).fit(data.prompts, data.scores[:, observed], data.output_tokens[:, observed],
                                    [data.model_names[j] for j in observed])


# Fits an answer judge from labelled history (newest first), given the current ex-ante predictor
# (whose p the judge may weigh); raises PredictorError when the history cannot fit one yet.
JudgeFit = Callable[[Sequence[LabelledOutcome], FleetPredictor], AnswerJudge]
JUDGE_PREFIX, JUDGE_SUFFIX = "judge-", ".pkl"
_JUDGE_MAGIC = "switchyard-answer-judge"


def fit_answer_judge(history: Sequence[LabelledOutcome], predictor: FleetPredictor) -> AnswerJudge:
    """The production fit of the answer judge (scheduler/learning/judge.py: a ``PosthocJudge``) on
    labelled answers, one column per fleet model; raises PredictorError while there are too few."""
    return fit_posthoc_judge(history, predictor.fleet.names)


class JudgeVersions:
    """Fitted answer judges on disk, one pickle per version; the newest is the one in use."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def save(self, judge: AnswerJudge, now: dt.datetime) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        version = now.strftime("%Y%m%dT%H%M%S%fZ")
        temporary = self.directory / f".{JUDGE_PREFIX}{version}{JUDGE_SUFFIX}.tmp"
        temporary.write_bytes(pickle.dumps({"magic": _JUDGE_MAGIC, "judge": judge}, protocol=pickle.HIGHEST_PROTOCOL))
        os.replace(temporary, self.path(version))
        return version

    def latest(self) -> str | None:
        if not self.directory.is_dir():
            return None
        versions = sorted(p.name[len(JUDGE_PREFIX):-len(JUDGE_SUFFIX)]
                          for p in self.directory.glob(f"{JUDGE_PREFIX}*{JUDGE_SUFFIX}"))
        return versions[-1] if versions else None

    def load(self, version: str) -> AnswerJudge:
        """Read a judge this Switchyard wrote (a pickle: only load files you wrote)."""
        path = self.path(version)
        try:
            blob = pickle.loads(path.read_bytes())
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
            raise PredictorError(f"{path}: not a readable answer judge file ({exc})") from exc
        if not isinstance(blob, dict) or blob.get("magic") != _JUDGE_MAGIC or not hasattr(blob.get("judge"), "judge"):
            raise PredictorError(f"{path}: not a Switchyard answer judge file")
        judge: AnswerJudge = blob["judge"]
        return judge

    def path(self, version: str) -> Path:
        return self.directory / f"{JUDGE_PREFIX}{version}{JUDGE_SUFFIX}"


class Learner:
    def __init__(self, settings: Settings, db: Database, fleet: Fleet, judge_fit: JudgeFit | None = None) -> None:
        """``judge_fit``: how the answer judge is fitted from labelled history (default
        :func:`fit_answer_judge`)."""
        self.settings = settings
        self.fleet = fleet
        self.labels = LabelStore(db)
        self.versions = PredictorVersions(settings.predictor_dir)
        self.judges = JudgeVersions(settings.predictor_dir)
        self._judge_fit = judge_fit or fit_answer_judge
        self._judge: tuple[str, AnswerJudge] | None = None
        self._unreadable_judge: str | None = None
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

    def judge(self) -> tuple[AnswerJudge | None, str | None]:
        """The newest fitted answer judge and its version (reloaded only when a new one appears);
        (None, None) before any was fitted: then the review accepts answers as they are."""
        version = self.judges.latest()
        current = self._judge[0] if self._judge else None
        if version is not None and version not in (current, self._unreadable_judge):
            try:
                self._judge = (version, self.judges.load(version))
                log.info("answer judge version %s loaded", version)
            except PredictorError as exc:
                self._unreadable_judge = version
                log.warning("keeping the previous answer judge: %s", exc)
        return (self._judge[1], self._judge[0]) if self._judge else (None, None)

    def refit_judge(self, now: dt.datetime) -> str:
        """Fit the answer judge on the labelled answers of the job history and save a new version."""
        history = self.labels.history()
        judge = self._judge_fit(history, self.predictor())
        version = self.judges.save(judge, now)
        log.info("answer judge version %s fitted on %d labelled answers", version, len(history))
        return version

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
            try:
                self.refit_judge(now)
            except PredictorError as exc:   # e.g. too few labelled answers yet: the current judge stays
                log.info("the answer judge was not refitted: %s", exc)
            except Exception:  # noqa: BLE001 - keep reviewing with the current judge
                log.exception("refitting the answer judge failed")

        self._fitting = threading.Thread(target=fit, name="switchyard-refit", daemon=True)
        self._fitting.start()
        return True
