"""The production policy plans cascades once a cascade model is fitted: ``switchyard predictor fit
--dataset FILE --cascade`` (Learner.refit_cascade, the replay's fit) on outcome data with answers,
then a real tick on Postgres with the learner's newest versions.

The data is the shipped RouteLLM GSM8K sample (Mixtral and GPT-4 answers, tests/data/ATTRIBUTION.md)
with its models named as the fleet names them.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from scheduler.datasets import read_dataset
from scheduler.datasets.records import OutcomeRecord, Split
from scheduler.fleet import Fleet, load_fleet
from scheduler.jobspec import BatchSpec, JobSpec
from scheduler.learning.learner import Learner
from scheduler.loop import Scheduler, default_policy
from scheduler.storage import Database, JobStore, utcnow
from scheduler.storage.tables import Job
from tests.conftest import make_settings
from tests.integration.tickkit import register_workers

DATA = Path(__file__).resolve().parents[1] / "data" / "gsm8k_sample.jsonl"
FLEET_NAMES = {"mistralai/Mixtral-8x7B-Instruct-v0.1": "mixtral", "gpt-4-1106-preview": "gpt-4"}
FLEET = """
[[models]]
name = "mixtral"
backend = "echo"
weights = "none"
usd_per_mtok_input = 0.24
usd_per_mtok_output = 0.24
capacity_jobs = 1000

[[models]]
name = "gpt-4"
backend = "echo"
weights = "none"
usd_per_mtok_input = 24.7
usd_per_mtok_output = 24.7
capacity_jobs = 1000
"""


def as_fleet(record: OutcomeRecord) -> OutcomeRecord:
    return dataclasses.replace(record, outcomes={FLEET_NAMES[m]: o for m, o in record.outcomes.items()})


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET)
    return load_fleet(path)


def fitted_scheduler(db: Database, fleet: Fleet, tmp_path: Path) -> tuple[Scheduler, list[OutcomeRecord]]:
    """A scheduler whose learner has a predictor and a cascade model fitted on the sample's train
    split; and the test split's records."""
    records = [as_fleet(r) for r in read_dataset(DATA).records]
    train = [r for r in records if r.split is Split.TRAIN]
    settings = make_settings(db.url, predictor_dir=tmp_path / "predictors", plan_horizon_s=86_400.0,
                             exploration_target_labels=0)
    learner = Learner(settings, db, fleet)
    learner.refit(utcnow(), train)
    assert learner.cascade_model() is None                 # none fitted yet: direct models only
    learner.refit_cascade(utcnow(), train)
    model = learner.cascade_model()
    assert model is not None and model.strategies
    register_workers(db, fleet.names, utcnow())
    scheduler = Scheduler(settings, db, fleet, default_policy(fleet, settings), dispatcher=None, learner=learner)
    return scheduler, [r for r in records if r.split is Split.TEST]


def test_a_fitted_cascade_model_makes_the_tick_plan_cascades(pg_db: Database, fleet: Fleet, tmp_path: Path) -> None:
    scheduler, test = fitted_scheduler(pg_db, fleet, tmp_path)
    # Quality a little below GPT-4's on this set: the cheapest plan mixes Mixtral, GPT-4 and cascades.
    batch = BatchSpec(jobs=[JobSpec(prompt=r.prompt, max_tokens=256) for r in test], alpha=0.8)
    JobStore(pg_db).submit_batch("default", batch, utcnow())
    report = scheduler.tick()

    assert any(note.startswith("cascade strategies offered: ") and not note.endswith(": 0")
               for note in report.plan.notes), report.plan.notes
    cascaded = [a for a in report.plan.assignments if a.cascade]
    assert cascaded, [a.reason for a in report.plan.assignments][:5]
    first = cascaded[0]
    assert first.model == "mixtral" and first.cascade[0].next_model == "gpt-4"
    assert first.reason.startswith("cascade: mixtral then gpt-4")
    with pg_db.session() as session:
        stored = session.get(Job, first.job_id)
        assert stored is not None and stored.assigned_model == "mixtral"
        steps = stored.cascade if isinstance(stored.cascade, list) else json.loads(stored.cascade)
        assert steps[0]["next_model"] == "gpt-4"


def test_a_batch_that_may_not_cascade_gets_direct_models_only(pg_db: Database, fleet: Fleet, tmp_path: Path) -> None:
    scheduler, test = fitted_scheduler(pg_db, fleet, tmp_path)
    batch = BatchSpec(jobs=[JobSpec(prompt=r.prompt, max_tokens=256) for r in test], alpha=0.8, cascade=False)
    JobStore(pg_db).submit_batch("default", batch, utcnow())
    report = scheduler.tick()
    assert report.plan.assignments and not any(a.cascade for a in report.plan.assignments)
    assert not any(a.reason.startswith("cascade:") for a in report.plan.assignments)


def test_the_answer_judge_learns_from_a_datasets_answers_before_any_job_ran(
        pg_db: Database, fleet: Fleet, tmp_path: Path) -> None:
    """``predictor fit --cascade`` fits the review's judge too: a fresh deployment that imported
    outcome data with answers can judge its first cascade's answers."""
    scheduler, test = fitted_scheduler(pg_db, fleet, tmp_path)
    learner = scheduler.learner
    assert learner is not None and learner.judge() == (None, None) and not learner.labels.history()
    train = [as_fleet(r) for r in read_dataset(DATA).records if r.split is Split.TRAIN]
    version = learner.refit_judge(utcnow(), train)
    judge, loaded = learner.judge()
    assert judge is not None and loaded == version
    # On held-out answers it ranks Mixtral's right answers above its wrong ones.
    scored = [(judge.judge(r.prompt, {"mixtral": r.outcomes["mixtral"].response or ""}, {}).p_post["mixtral"],
               r.outcomes["mixtral"].score) for r in test]
    right = [p for p, score in scored if score == 1.0]
    wrong = [p for p, score in scored if score == 0.0]
    assert right and wrong
    pairs = [(a > b) + 0.5 * (a == b) for a in right for b in wrong]
    assert sum(pairs) / len(pairs) > 0.6, f"within-set AUC {sum(pairs) / len(pairs):.2f}"


def test_in_a_scarce_tick_cascades_share_mixtrals_slots(pg_db: Database, tmp_path: Path) -> None:
    # Mixtral can take only a third of the window this tick: cascades are still planned (they
    # once needed room for the whole window), and the jobs that start on Mixtral, directly or as
    # a cascade, fit its slots.
    test_count = sum(1 for r in read_dataset(DATA).records if r.split is Split.TEST)
    slots = test_count // 3
    path = tmp_path / "scarce.toml"
    path.write_text(FLEET.replace("capacity_jobs = 1000", f"capacity_jobs = {slots}", 1))
    scarce = load_fleet(path)
    scheduler, test = fitted_scheduler(pg_db, scarce, tmp_path)
    batch = BatchSpec(jobs=[JobSpec(prompt=r.prompt, max_tokens=256) for r in test], alpha=0.8)
    JobStore(pg_db).submit_batch("default", batch, utcnow())
    report = scheduler.tick()

    on_mixtral = [a for a in report.plan.assignments if a.model == "mixtral"]
    assert [a for a in on_mixtral if a.cascade], [a.reason for a in report.plan.assignments][:5]
    assert len(on_mixtral) <= slots
    assert f"capacity mixtral={slots}, gpt-4=1000" in report.plan.notes
