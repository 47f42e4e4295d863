"""Replay through the production decision path: a simulated fleet and ``OptimizingPolicy.plan``.

The ``switchyard`` curve of a replay is what the scheduler itself would have decided: every
window of arriving test jobs becomes ``WindowJob``s and one call of the production
``scheduler.policy.OptimizingPolicy.plan``, on a fleet built from the dataset:

* one ``ModelSpec`` per dataset model, token-priced at the prices a replay policy believes
  (:func:`scheduler.replay.costs.decision_prices`: list prices, or a per-prompt-token price from
  the train split's logged costs), so the production cost estimate (``scheduler.estimates``) is
  the replay's decision cost;
* ample capacity: every model has as many live workers and as much room as the window has jobs,
  so no job waits for a slot (``ModelState``);
* every job is one batch with the swept alpha (plus the safety margin) as its mean-quality
  target, no deadline, floor or cap, and ``must_place``: a replayed window has no later tick, so
  the plan must place every job (an infinite deferral penalty, as the optimizer's contract says);
* the predictor is :class:`KnownPredictions`, which hands the policy the predictions replay has
  already computed for the test split (fitting is done once, not per window).

Fleet names must match ``[a-z0-9][a-z0-9._-]*``; dataset names (``mistralai/mixtral-8x7b-chat``)
are mapped to such names (:func:`fleet_names`) and back by column.
"""
from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scheduler.datasets.costing import OutcomeMatrix
from scheduler.datasets.records import ModelPrice
from scheduler.cascade import CascadeModel
from scheduler.fleet import BackendKind, Fleet, ModelSpec
from scheduler.learning.fleet_predictor import FleetPrediction, FleetPredictor
from scheduler.learning.learner import fit_predictor
from scheduler.learning.training import TrainingSet
from scheduler.plan import ModelState, Plan, WindowJob
from scheduler.policy import OptimizingPolicy
from scheduler.predictor import Predictor
from scheduler.replay.costs import decision_prices
from scheduler.replay.policies import SolverChoice

# A replay's clock: fixed, so plans (and their reasons) do not depend on when the replay ran.
REPLAY_NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
REPLAY_BATCH = "replay"
# Large enough that the production estimate never cuts a predicted answer length short.
UNLIMITED_TOKENS = 1 << 30


def fleet_names(models: Sequence[str]) -> list[str]:
    """A valid, unique fleet name for each dataset model, in the same order."""
    names: list[str] = []
    for model in models:
        base = re.sub(r"[^a-z0-9._-]+", "-", model.lower()).strip("-._")[:56] or "model"
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def simulated_fleet(models: Sequence[str], prices: dict[str, ModelPrice], train: OutcomeMatrix,
                    window: int, quality_prior: float = 0.5) -> Fleet:
    """The dataset's models as a token-priced fleet that can take a whole window each.
    ``quality_prior``: every model's fleet-file prior (``ModelSpec.quality_prior``), the p the
    production ``FleetPredictor`` gives a model its fitted predictor does not know (online replay)."""
    pin, pout = decision_prices(list(models), prices, train)
    return Fleet(models=tuple(
        ModelSpec(name=name, backend=BackendKind.ECHO, weights=f"replay:{model}",
                  usd_per_mtok_input=float(pin[j]), usd_per_mtok_output=float(pout[j]),
                  capacity_jobs=max(window, 1), quality_prior=quality_prior)
        for j, (name, model) in enumerate(zip(fleet_names(models), models, strict=True))))


def production_fit(kind: str, data: OutcomeMatrix, use_tasks: bool,
                   model_names: Sequence[str] | None = None) -> Predictor:
    """The production fit (``scheduler.learning.learner.fit_predictor``) on a replay's outcome
    matrix, its columns named ``model_names`` (default: the dataset's); with ``use_tasks`` the
    records' task labels go along (production jobs carry none). Raises PredictorError as
    production does when there is nothing to fit."""
    return fit_predictor(kind, TrainingSet(
        list(data.prompts), data.scores, data.output_tokens, list(model_names or data.models),
        tasks=list(data.tasks) if use_tasks else None))


class TaskPredictor:
    """The policy's predictor: the production ``FleetPredictor``, handed each job's task label.

    ``OptimizingPolicy.plan`` asks by prompts and keys (job ids); the replay's jobs carry a task
    label that production jobs do not, so it is looked up here by id. Lengths nothing predicts
    (a model the version does not know, a dataset without token counts) are the replay's assumed
    length, as in the offline replay's decision cost."""

    def __init__(self, predictor: FleetPredictor, tasks: dict[str, str] | None, assumed_output_tokens: float) -> None:
        self.predictor = predictor
        self.tasks = tasks
        self.assumed_output_tokens = float(assumed_output_tokens)

    @property
    def name(self) -> str:
        return self.predictor.name

    def predict(self, prompts: Sequence[str], keys: Sequence[str] | None = None) -> FleetPrediction:
        tasks = [self.tasks[k] for k in keys] if self.tasks is not None and keys is not None else None
        prediction = self.predictor.predict(prompts, keys=keys, tasks=tasks)
        tokens = prediction.output_tokens
        if tokens is None:
            tokens = np.full(prediction.p_success.shape, self.assumed_output_tokens)
        return FleetPrediction(prediction.p_success, np.where(np.isnan(tokens), self.assumed_output_tokens, tokens))


def fleet_predictions(fleet: Fleet, fitted: Predictor, ids: Sequence[str], prompts: Sequence[str],
                      tasks: Sequence[str] | None, assumed_output_tokens: float) -> tuple[np.ndarray, np.ndarray]:
    """(p, output tokens), each (N, M) in the fleet's column order, as the tick sees them: the
    production ``FleetPredictor`` over ``fitted`` (fitted with the fleet's names, see
    :func:`production_fit`), so its blend of each model's fitted p with the fleet prior applies."""
    tasks_by_id = None if tasks is None else dict(zip(ids, tasks, strict=True))
    prediction = TaskPredictor(FleetPredictor(fleet, fitted, "replay"), tasks_by_id,
                               assumed_output_tokens).predict(prompts, keys=ids)
    assert prediction.output_tokens is not None   # TaskPredictor fills every length
    return prediction.p_success, prediction.output_tokens


def ample_states(fleet: Fleet, jobs: int) -> list[ModelState]:
    """Every model live with a slot for each of ``jobs`` and nothing queued."""
    return [ModelState(spec.name, live_workers=max(jobs, 1), backlog_jobs=0) for spec in fleet.models]


@dataclass(frozen=True)
class KnownPrediction:
    p_success: np.ndarray
    output_tokens: np.ndarray | None


class KnownPredictions:
    """The policy's predictor, answering from predictions already made (by job id)."""

    def __init__(self, ids: Sequence[str], p_success: np.ndarray, output_tokens: np.ndarray | None,
                 name: str = "replay") -> None:
        self._row = {job_id: i for i, job_id in enumerate(ids)}
        self._p = p_success
        self._tokens = output_tokens
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def predict(self, prompts: Sequence[str], keys: Sequence[str] | None = None) -> KnownPrediction:
        if keys is None:
            raise ValueError("replay predictions are looked up by job id: pass keys")
        rows = np.array([self._row[k] for k in keys], dtype=np.int64)
        return KnownPrediction(self._p[rows], None if self._tokens is None else self._tokens[rows])


def window_jobs(ids: Sequence[str], prompts: Sequence[str], alpha: float) -> list[WindowJob]:
    """One window's jobs: one batch with mean-quality target ``alpha``, each to be placed now."""
    return [WindowJob(id=job_id, batch_id=REPLAY_BATCH, prompt_text=prompt, max_tokens=UNLIMITED_TOKENS,
                      min_quality=None, deadline_at=None, allowed_models=None, max_cost_usd=None,
                      batch_alpha=alpha, created_at=REPLAY_NOW, attempts=0, must_place=True)
            for job_id, prompt in zip(ids, prompts, strict=True)]


class PolicyRouter:
    """Routes a stream of jobs in windows through ``OptimizingPolicy.plan`` on a simulated fleet."""

    def __init__(self, fleet: Fleet, ids: Sequence[str], prompts: Sequence[str], p_success: np.ndarray,
                 output_tokens: np.ndarray, solver: SolverChoice, window: int,
                 cascade: CascadeModel | None = None) -> None:
        self.fleet = fleet
        self.ids = list(ids)
        self.prompts = list(prompts)
        self.window = window
        self.policy = OptimizingPolicy(fleet, KnownPredictions(ids, p_success, output_tokens),
                                       method=solver.method, backend=solver.backend,
                                       time_limit_s=solver.time_limit_s, cascade=cascade)
        self.column = {name: j for j, name in enumerate(fleet.names)}

    def plans(self, alpha: float) -> list[Plan]:
        """One plan per window of the stream, in arrival order."""
        out = []
        for start in range(0, len(self.ids), self.window):
            stop = min(start + self.window, len(self.ids))
            jobs = window_jobs(self.ids[start:stop], self.prompts[start:stop], alpha)
            out.append(self.policy.plan(jobs, ample_states(self.fleet, len(jobs)), REPLAY_NOW,
                                        tick_id=f"replay-{start // self.window}"))
        return out

    def route(self, alpha: float) -> np.ndarray:
        """(N,) the model column each job's plan assigned it to."""
        return self.picks(self.plans(alpha))

    def picks(self, plans: Sequence[Plan]) -> np.ndarray:
        return read_plans(plans, self.ids, self.column).model


@dataclass(frozen=True)
class PlannedPicks:
    model: np.ndarray       # (N,) the model column each job was assigned to
    p: np.ndarray           # (N,) the p the plan promised for it
    exploring: np.ndarray   # (N,) bool: the job was pinned to explore its model


def read_plans(plans: Sequence[Plan], ids: Sequence[str], column: dict[str, int]) -> PlannedPicks:
    """Per job of ``ids``, what ``plans`` assigned it (every job must have been placed)."""
    row = {job_id: i for i, job_id in enumerate(ids)}
    chosen = np.full(len(ids), -1, dtype=np.int64)
    p = np.full(len(ids), np.nan)
    exploring = np.zeros(len(ids), dtype=bool)
    for plan in plans:
        if plan.deferrals:
            # Ample capacity and must_place: a deferral here is a bug, not a routing choice.
            raise RuntimeError(f"the simulated fleet deferred {len(plan.deferrals)} jobs: "
                               f"{plan.deferrals[0].reason}")
        for assignment in plan.assignments:
            i = row[assignment.job_id]
            chosen[i], p[i] = column[assignment.model], assignment.predicted_quality
            exploring[i] = assignment.exploring
    return PlannedPicks(chosen, p, exploring)
