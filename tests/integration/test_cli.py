"""The CLI against a real API (uvicorn in a thread) on a real Postgres, and the operator's key and
tenant commands on that database."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from typer.testing import CliRunner

from scheduler.api.app import create_app
from scheduler.cli import app as cli
from scheduler.fleet import Fleet
from scheduler.storage import Database
from tests.conftest import create_api_key, free_port, make_settings


@pytest.fixture
def api_url(pg_db: Database, fleet: Fleet) -> Iterator[str]:
    port = free_port()
    # Keys are looked up on every request: the revocation test expects the next request to be refused.
    server = uvicorn.Server(uvicorn.Config(create_app(make_settings(pg_db.url, api_key_cache_s=0), pg_db, fleet),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def run(api_url: str, pg_db: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    """The CLI as a user with a key of tenant "default" runs it (in an empty folder: no local key file)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SWITCHYARD_API_URL", api_url)
    monkeypatch.setenv("SWITCHYARD_DATABASE_URL", pg_db.url)
    monkeypatch.setenv("SWITCHYARD_BROKER_URL", "memory://")
    monkeypatch.setenv("SWITCHYARD_API_KEY", create_api_key(pg_db, "default"))
    runner = CliRunner()

    def invoke(*args: str):  # type: ignore[no-untyped-def]
        return runner.invoke(cli, list(args))

    return invoke


def test_submit_status_results_cancel(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    job = run("submit", "What is 2 + 2?", "--max-tokens", "8")
    assert job.exit_code == 0, job.output
    job_id = job.stdout.strip()
    status = run("status", job_id)
    assert json.loads(status.stdout)["status"] == "pending"

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('"plain string prompt"\n\n{"prompt": "object prompt", "max_tokens": 4}\n')
    batch = run("submit", "--file", str(prompts), "--alpha", "0.3")
    assert batch.exit_code == 0, batch.output
    batch_id = batch.stdout.strip().splitlines()[0]
    summary = json.loads(run("status", batch_id, "--batch").stdout)
    assert summary["num_jobs"] == 2 and summary["alpha"] == 0.3

    out = tmp_path / "results.jsonl"
    assert run("results", batch_id, "--out", str(out)).exit_code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["plain string prompt", "object prompt"]

    assert run("cancel", job_id).stdout.strip() == "cancelled"
    waited = run("wait", job_id, "--timeout-s", "5")
    assert waited.exit_code == 0


def test_bad_input_is_one_clear_line(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{not json\n')
    result = run("submit", "--file", str(bad))
    assert result.exit_code == 1 and "bad.jsonl:2: not valid JSON" in result.output
    unknown = run("submit", "hi", "--model", "gpt-9")
    assert unknown.exit_code == 1 and "unknown model 'gpt-9'" in unknown.output
    assert run("status", "no-such-job").exit_code == 1
    assert "Traceback" not in result.output + unknown.output


def test_dry_run_tick_prints_the_plan(run, pg_db: Database) -> None:  # type: ignore[no-untyped-def]
    run("submit", "What is the capital of France?")
    result = run("tick", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "dry run: nothing written" in result.output
    assert "no live worker" in result.output  # nobody hosts a model in this test: deferred, with the reason
    assert json.loads(run("status", run("submit", "x").stdout.strip()).stdout)["status"] == "pending"


def test_unreachable_api_says_how_to_fix_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHYARD_API_URL", f"http://127.0.0.1:{free_port()}")
    result = CliRunner().invoke(cli, ["status", "x"])
    assert result.exit_code == 1 and "cannot reach the API" in result.output


def test_keys_create_list_revoke(run, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    created = run("keys", "create", "--tenant", "acme", "--name", "ci")
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    assert key.startswith("sy-") and len(key) > 40
    assert "shown only now" in created.stderr
    admin = run("keys", "create", "--tenant", "ops", "--admin")
    assert admin.exit_code == 0, admin.output

    listed = [json.loads(line) for line in run("keys", "list", "--json").stdout.splitlines()]
    mine = next(row for row in listed if row["tenant"] == "acme")
    assert (mine["admin"], mine["name"], mine["prefix"], mine["revoked"]) == (False, "ci", key[:10], None)
    assert [row["admin"] for row in listed if row["tenant"] == "ops"] == [True]
    assert key not in run("keys", "list").stdout  # the table never shows a key

    # The new key works against the API, and its jobs belong to its tenant.
    monkeypatch.setenv("SWITCHYARD_API_KEY", key)
    job_id = run("submit", "hello").stdout.strip()
    assert json.loads(run("status", job_id).stdout)["owner"] == "acme"
    used = next(json.loads(line) for line in run("keys", "list", "--json").stdout.splitlines() if key[:10] in line)
    assert used["last_used"] is not None

    revoked = run("keys", "revoke", mine["id"])
    assert revoked.exit_code == 0 and "revoked key" in revoked.stdout
    refused = run("status", job_id)
    assert refused.exit_code == 1 and "this API key was revoked" in refused.output
    assert "SWITCHYARD_API_KEY" in refused.output and "Traceback" not in refused.output
    assert run("keys", "revoke", "no-such-id").exit_code == 1


def test_tenants_set_and_list(run) -> None:  # type: ignore[no-untyped-def]
    result = run("tenants", "set", "acme", "--weight", "2", "--max-spend-usd", "5", "--max-pending-jobs", "100",
                 "--requests-per-minute", "600")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in map(json.loads, run("tenants", "list", "--json").stdout.splitlines())}
    assert {k: rows["acme"][k] for k in ("weight", "max_spend_usd", "max_pending_jobs", "requests_per_minute")} == \
        {"weight": 2.0, "max_spend_usd": 5.0, "max_pending_jobs": 100, "requests_per_minute": 600}
    # A limit not given keeps its value; 'none' lifts one.
    assert run("tenants", "set", "acme", "--max-pending-jobs", "none").exit_code == 0
    acme = next(json.loads(line) for line in run("tenants", "list", "--json").stdout.splitlines() if "acme" in line)
    assert (acme["max_pending_jobs"], acme["max_spend_usd"], acme["weight"]) == (None, 5.0, 2.0)
    for bad in (["--max-spend-usd", "lots"], ["--max-pending-jobs", "-1"], ["--requests-per-minute", "0"],
                ["--max-spend-usd", "nan"], ["--weight", "0"]):
        refused = run("tenants", "set", "acme", *bad)
        assert refused.exit_code != 0 and "Traceback" not in refused.output, (bad, refused.output)
    assert run("keys", "create", "--tenant", "no spaces please").exit_code == 1


def test_a_client_command_without_a_key_says_how_to_get_one(run, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("SWITCHYARD_API_KEY")
    result = run("status", "x")
    assert result.exit_code == 1 and "missing API key" in result.output
    assert "SWITCHYARD_API_KEY" in result.output and ".switchyard/api-key" in result.output


def test_predictor_fit_imports_a_dataset_and_a_later_fit_still_learns_from_it(
        run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SWITCHYARD_PREDICTOR_DIR", str(tmp_path / "predictors"))
    outcomes = Path(__file__).resolve().parents[1] / "data" / "fleet_outcomes.jsonl"
    first = run("predictor", "fit", "--dataset", str(outcomes), "--split", "train", "--cascade")
    assert first.exit_code == 0, first.output
    assert "72 outcome records imported" in first.stdout
    assert "cascade model version" in first.stdout and "answer judge version" in first.stdout
    again = run("predictor", "fit")   # no files: what was imported is still learnt from
    assert again.exit_code == 0, again.output
    assert "learning from the 72 outcome records imported earlier" in again.stdout
    refused = run("predictor", "fit", "--split", "train")
    assert refused.exit_code == 1 and "--split picks records of the --dataset files" in refused.output
