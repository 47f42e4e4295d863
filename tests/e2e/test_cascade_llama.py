"""Cascades on real parts, planned from what the fleet's models really did.

tests/data/fleet_outcomes.jsonl holds SmolLM2-135M's and Gemma-3-270M's real answers to 96
questions with references, graded (scripts/record_fleet_outcomes.py made it on this fleet). The
product's own command fits the ex-ante predictor, the cascade model and the answer judge on it
(``switchyard predictor fit --dataset ... --cascade``). Then the whole stack runs: the API, the
scheduler process (its tick plans with the production policy and the fitted cascade model, its
upkeep reviews answers with the fitted judge) and one real llama.cpp Celery worker per model. A
batch of new questions with references and a quality target goes in through the API; the test
reads every job's attempts back through the API.

On these answers Gemma is the cheaper model (it answers in a few tokens) and SmolLM2 right where
Gemma is often wrong, so the strategies learnt are "gemma-3-270m, then smollm2-135m if post-hoc p <
t". Which jobs the plan cascades and which answers escalate is the product's decision; the test
holds it to the rules (an escalation says why and pays for both runs, the accepted answer is the
best judged one, nothing is lost) and checks that it did cascade. About two minutes on two cores.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from scheduler.client import SwitchyardClient
from scheduler.embedded import EmbeddedStack
from scheduler.storage import Database
from tests.conftest import free_port, make_settings

pytestmark = pytest.mark.e2e

OUTCOMES = Path(__file__).resolve().parents[1] / "data" / "fleet_outcomes.jsonl"
SMOL, GEMMA = "smollm2-135m", "gemma-3-270m"
# New questions (none is in the outcome data), with references and graders.
QUESTIONS = [
    ("What is the capital of Italy?", "Rome", "contains"), ("What is 14 plus 9?", "23", "numeric"),
    ("What is 7 times 8?", "56", "numeric"), ("What is the capital of Egypt?", "Cairo", "contains"),
    ("Who wrote Romeo and Juliet?", "Shakespeare", "contains"), ("What is 50 minus 18?", "32", "numeric"),
    ("What is the capital of Kenya?", "Nairobi", "contains"), ("How many legs does a dog have?", "4", "numeric"),
]
# Above what the cheaper model alone is predicted to reach on these questions, so meeting it takes
# the dearer model or cascades; and reachable with every job placed (a higher target would leave
# the weakest jobs waiting for quality headroom, as the optimizer's mean-quality row allows).
ALPHA = 0.6


def test_the_policy_plans_cascades_from_recorded_answers_and_real_workers_run_them(
        pg_db: Database, redis_url: str, tmp_path: Path) -> None:
    settings = make_settings(pg_db.url, redis_url, tick_interval_s=0.5, heartbeat_interval_s=1.0,
                             predictor_dir=tmp_path / "predictors")
    fitted = subprocess.run([sys.executable, "-m", "scheduler.cli", "predictor", "fit", "--dataset", str(OUTCOMES),
                             "--cascade"], env=os.environ | settings.as_environment(), capture_output=True,
                            text=True, timeout=300)
    assert fitted.returncode == 0, fitted.stderr
    assert "cascade model version" in fitted.stdout and "answer judge version" in fitted.stdout, fitted.stdout

    with EmbeddedStack(settings, tmp_path / "logs", api_port=free_port()) as stack:
        stack.wait_ready(timeout_s=300)
        with SwitchyardClient(stack.api_url, stack.api_key) as api:
            batch = api.submit_batch({"name": "cascade-e2e", "alpha": ALPHA, "jobs": [
                {"prompt": q, "reference": r, "grader": g, "max_tokens": 24} for q, r, g in QUESTIONS]})
            deadline = time.monotonic() + 300
            while not api.batch(batch["id"])["done"]:
                stack.check_alive()
                assert time.monotonic() < deadline, [api.job(j)["status"] for j in batch["job_ids"]]
                time.sleep(0.5)
            jobs = [api.job(job_id) for job_id in batch["job_ids"]]
            stack.check_alive()   # the scheduler and both workers outlived the reviews

    cascaded = [job for job in jobs if _reviewed(job)]
    escalated = [job for job in cascaded if len(job["attempt_history"]) == 2]
    for job in jobs:   # shown with -s: what the models said and what the review made of it
        for attempt in job["attempt_history"]:
            print(f"{job['prompt']!r} {attempt['model']}: {attempt['answer']!r} p_post={attempt['p_post']} "
                  f"{attempt['decision']}: {attempt['reason']}")
    assert cascaded, "the policy planned no cascade"
    assert escalated, "no answer was judged weak enough to escalate"
    for job in jobs:
        history = job["attempt_history"]
        assert job["status"] == "succeeded", job
        assert job["score"] in (0.0, 1.0), job          # graded against its reference
        assert job["cost_usd"] == pytest.approx(sum(a["cost_usd"] for a in history))
        if job not in cascaded:
            assert len(history) == 1 and history[0]["p_post"] is None
            continue
        first = history[0]
        assert first["model"] == GEMMA and first["p_post"] is not None and first["judge"]
        accepted = [a for a in history if a["decision"] == "accepted"]
        assert len(accepted) == 1 and accepted[0]["answer"] == job["result_text"]
        if job in escalated:
            second = history[1]
            assert second["model"] == SMOL and second["answer"]
            # The reason keeps the p that escalated; p_post is the latest review's, beside the second answer.
            said = re.match(r"escalate: post-hoc p=(\d\.\d\d) < (\d\.\d\d); next smollm2-135m", first["reason"])
            assert said is not None and float(said[1]) < float(said[2]), first["reason"]
            assert accepted[0]["p_post"] == max(first["p_post"], second["p_post"])
        else:
            assert first["decision"] == "accepted" and first["reason"].startswith("accept: post-hoc p=")


def _reviewed(job: dict[str, Any]) -> bool:
    """Planned as a cascade: its first answer was judged (a direct job's answer is accepted as it is)."""
    return job["attempt_history"][0]["p_post"] is not None
