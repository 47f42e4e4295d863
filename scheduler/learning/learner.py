"""Keeps the tick's predictor, the policy's cascade model and the review's answer judge current:
loads the newest fitted version of each, refits the predictor and the judge when enough new
labels have arrived (in a background thread, so the tick never waits for a fit). The cascade
model is fitted on outcome data where several models answered the same jobs
(``switchyard predictor fit --dataset FILE --cascade``).

The answer judge (scheduler/judging.py) learns from the same labels as the ex-ante predictor:
every scored attempt carries the answer it scored (``LabelStore.history``), so a cascade's
answers, graded against references or fed back, teach it in production as outcomes teach the
predictor. Its versions are kept beside the predictor's (``judge-<version>.pkl``).

Every fit also learns from the outcome data the deployment imported (scheduler/learning/imported.py),
so a background refit does not forget it."""
from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Sequence

import numpy as np

from scheduler.cascade import CascadeModel
from scheduler.cascade_fit import fit_cascade_model
from scheduler.estimates import DEFAULT_OUTPUT_TOKENS
from scheduler.datasets.costing import OutcomeMatrix
from scheduler.datasets.records import OutcomeRecord
from scheduler.judging import AnswerJudge
from scheduler.fleet import Fleet
from scheduler.learning.judge import Label, answers_from_outcomes, fit_posthoc_judge
from scheduler.learning.exploration import Exploration, Feedback, promise_gap
from scheduler.learning.fleet_predictor import FleetPredictor, PredictionCache
from scheduler.learning.imported import ImportedOutcomes
from scheduler.learning.training import TrainingSet, training_set
from scheduler.learning.versions import Newest, PickledVersions, PredictorVersions
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
                                    [data.model_names[j] for j in observed], tasks=data.tasks)


# Fits an answer judge from labelled history (newest first), given the current ex-ante predictor
# (whose p the judge may weigh); raises PredictorError when the history cannot fit one yet.
JudgeFit = Callable[[Sequence[Label], FleetPredictor], AnswerJudge]


def fit_answer_judge(history: Sequence[Label], predictor: FleetPredictor) -> AnswerJudge:
    """The production fit of the answer judge (scheduler/learning/judge.py: a ``PosthocJudge``) on
    labelled answers, one column per fleet model; raises PredictorError while there are too few."""
    return fit_posthoc_judge(history, predictor.fleet.names)


def fit_cascade_from_outcomes(records: Sequence[OutcomeRecord], fleet: Fleet, predictor_kind: str) -> CascadeModel:
    """The production fit of the cascade model (scheduler/cascade_fit.py, the replay's fit) on
    outcome data with answers, its models named as the fleet names them. A cascade's expected cost
    and quality are learnt from prompts that several models answered, which such data has and the
    job history has not (one model per job, or a cascade's own escalations: a biased sample). A
    model's mean cost is the fleet's price of the records' tokens."""
    names = list(fleet.names)
    usable = [r for r in records if any(model in names for model in r.outcomes)]
    if not usable:
        raise PredictorError(f"no outcome record names a fleet model ({', '.join(names)})")
    train = OutcomeMatrix.from_records(usable, names)
    if train.responses is None:
        raise PredictorError("the outcome data logs no answers (outcomes[MODEL].response): no cascade to fit")
    tokens = np.where(np.isnan(train.output_tokens), DEFAULT_OUTPUT_TOKENS, train.output_tokens)
    mean_cost = [float(np.mean(spec.cost_usd(train.prompt_tokens, tokens[:, j],
                                             tokens[:, j] / spec.tokens_per_second_prior)))
                 for j, spec in enumerate(fleet.models)]
    model, _ = fit_cascade_model(train, predictor_kind, mean_cost, use_tasks=False)
    if not model.strategies:
        raise PredictorError("no cascade strategy could be learnt (too few jobs with answers of two models)")
    return model


class Learner:
    def __init__(self, settings: Settings, db: Database, fleet: Fleet, judge_fit: JudgeFit | None = None) -> None:
        """``judge_fit``: how the answer judge is fitted from labelled history (default
        :func:`fit_answer_judge`)."""
        self.settings = settings
        self.fleet = fleet
        self.labels = LabelStore(db)
        self.versions = PredictorVersions(settings.predictor_dir)
        self.judges: PickledVersions[AnswerJudge] = PickledVersions(
            settings.predictor_dir, "judge-", "answer judge", lambda artifact: hasattr(artifact, "judge"))
        self.cascades: PickledVersions[CascadeModel] = PickledVersions(
            settings.predictor_dir, "cascade-", "cascade model", lambda artifact: isinstance(artifact, CascadeModel))
        self.imported = ImportedOutcomes(settings.predictor_dir)
        self._judge_fit = judge_fit or fit_answer_judge
        self._judge = Newest(self.judges)
        self._cascade = Newest(self.cascades)
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
        return self._judge.get()

    def cascade_model(self) -> CascadeModel | None:
        """The newest fitted cascade model for the policy (``switchyard predictor fit --cascade``),
        or None: then the policy plans direct models only."""
        model, _ = self._cascade.get()
        return model if model is not None and list(model.model_names) == list(self.fleet.names) else None

    def refit_cascade(self, now: dt.datetime, records: Sequence[OutcomeRecord] | None = None) -> str:
        """Fit the cascade model on outcome data with answers (default: the imported data) and save
        a new version."""
        records = self.imported.load() if records is None else records
        version = self.cascades.save(fit_cascade_from_outcomes(records, self.fleet, self.settings.predictor_kind), now)
        log.info("cascade model version %s fitted on %d outcome records", version, len(records))
        return version

    def refit_judge(self, now: dt.datetime, records: Sequence[OutcomeRecord] | None = None) -> str:
        """Fit the answer judge on the labelled answers of the job history and the answers logged in
        ``records`` (default: the imported outcome data) and save a new version."""
        records = self.imported.load() if records is None else records
        history: list[Label] = [*self.labels.history(), *answers_from_outcomes(records)]
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

    def refit(self, now: dt.datetime, records: Sequence[OutcomeRecord] | None = None) -> str:
        """Fit on all labelled history and ``records`` (default: the imported outcome data, so a
        background refit keeps what was imported) and save a new version; returns it."""
        records = self.imported.load() if records is None else records
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
                imported = self.imported.load()   # read once for both fits
            except Exception:  # noqa: BLE001 - a fit without it would forget the import
                log.exception("reading the imported outcome data failed; the current versions stay")
                return
            try:
                self.refit(now, imported)
            except Exception:  # noqa: BLE001 - keep scheduling with the current predictor
                log.exception("refitting the predictor failed")
            try:
                self.refit_judge(now, imported)
            except PredictorError as exc:   # e.g. too few labelled answers yet: the current judge stays
                log.info("the answer judge was not refitted: %s", exc)
            except Exception:  # noqa: BLE001 - keep reviewing with the current judge
                log.exception("refitting the answer judge failed")

        self._fitting = threading.Thread(target=fit, name="switchyard-refit", daemon=True)
        self._fitting.start()
        return True
