"""``switchyard up`` (everything on one machine) and ``switchyard demo`` (a real run, printed)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from scheduler.cli.common import clean_errors, settings
from scheduler.cli.jobs_cmd import wait_until_done
from scheduler.client import SwitchyardClient
from scheduler.embedded import LOCAL_TENANT, EmbeddedStack, StopRequested
from scheduler.settings import LOCAL_API_KEY_FILE

DEMO_QUESTIONS = [
    "What is the capital of France?",
    "What is 2 + 2?",
    "What is the largest planet in our solar system?",
    "Who wrote the play Hamlet?",
    "What is the chemical symbol for water?",
    "How many days are in a week?",
]
# With both models' priors (0.35 and 0.40), a batch target of 0.38 cannot be met by the cheaper
# model alone: the optimizer must mix them, so the demo shows the constrained assignment at work.
DEMO_ALPHA = 0.38


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(demo)


@clean_errors
def up(port: Annotated[int, typer.Option(help="API port.")] = 8000,
       log_dir: Annotated[Path, typer.Option(help="Where each process logs.")] = Path(".switchyard/logs")) -> None:
    """Start API, scheduler and one worker per fleet model on this machine (Ctrl-C, SIGTERM or SIGHUP
    stops them all)."""
    try:
        with EmbeddedStack(settings(), log_dir, api_port=port, stop_on_signals=True,
                           api_key_file=LOCAL_API_KEY_FILE) as stack:
            stack.wait_ready()
            typer.echo(f"Switchyard is up: API {stack.api_url} (docs {stack.api_url}/docs); logs in {log_dir}")
            typer.echo(f"API key of tenant {LOCAL_TENANT!r}: {stack.api_key}\n  (kept in {LOCAL_API_KEY_FILE}, "
                       "which the CLI reads; other clients send 'Authorization: Bearer <key>')")
            while True:
                stack.check_alive()
                time.sleep(1.0)
    except StopRequested as stop:
        # Stopping is how `up` ends: exit 0, as a service manager expects after its SIGTERM.
        typer.echo(f"stopped ({stop})")


@clean_errors
def demo(port: Annotated[int, typer.Option(help="API port for the demo stack.")] = 8765,
         log_dir: Annotated[Path, typer.Option(help="Where each process logs.")] = Path(".switchyard/logs"),
         timeout_s: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 600.0) -> None:
    """Start the embedded stack, submit a few real questions, and print who answered and at what cost."""
    console = Console()
    console.print("Starting the embedded stack (SQLite + Celery over SQLite; models load once per worker)...")
    try:
        stack = EmbeddedStack(settings(), log_dir, api_port=port, stop_on_signals=True,
                              api_key_file=LOCAL_API_KEY_FILE)
        jobs = _run_demo(console, stack, timeout_s)
    except StopRequested as stop:
        console.print(f"stopped ({stop}) before the demo finished")
        raise typer.Exit(stop.exit_code) from None
    _print_answers(console, jobs)
    if any(job["status"] != "succeeded" for job in jobs):
        raise typer.Exit(1)


def _run_demo(console: Console, stack: EmbeddedStack, timeout_s: float) -> list[dict]:
    """Submit the demo batch to a fresh stack and return its jobs, in question order, once all are done."""
    with stack:
        stack.wait_ready()
        console.print(f"API key of tenant {LOCAL_TENANT!r} (kept in {LOCAL_API_KEY_FILE}): {stack.api_key}",
                      soft_wrap=True)  # a key must never be broken across lines
        with SwitchyardClient(stack.api_url, stack.api_key) as api:
            created = api.submit_batch({"name": "demo", "alpha": DEMO_ALPHA,
                                        "jobs": [{"prompt": q, "max_tokens": 48} for q in DEMO_QUESTIONS]})
            batch_id = created["id"]
            console.print(f"Submitted batch {batch_id}: {len(DEMO_QUESTIONS)} questions, mean quality >= {DEMO_ALPHA}")
            if not wait_until_done(api, [batch_id], batch=True, timeout_s=timeout_s, poll_s=0.5,
                                   console=console):
                raise typer.Exit(2)
            return sorted(api.jobs(batch_id=batch_id), key=lambda j: DEMO_QUESTIONS.index(j["prompt"]))


def _print_answers(console: Console, jobs: list[dict]) -> None:
    table = Table(title="Switchyard demo", show_lines=True)
    for column in ("question", "model", "answer", "tokens in/out", "latency", "cost"):
        table.add_column(column)
    for job in jobs:
        answer = (job["result_text"] or job["error"] or "").strip()
        table.add_row(job["prompt"], job["assigned_model"] or "-", answer,
                      f"{job['input_tokens'] or 0}/{job['output_tokens'] or 0}",
                      f"{job['latency_s'] or 0:.2f}s", f"${job['cost_usd'] or 0:.7f}")
    console.print(table)
    total = sum(job["cost_usd"] or 0.0 for job in jobs)
    console.print(f"{sum(j['status'] == 'succeeded' for j in jobs)}/{len(jobs)} succeeded; total cost ${total:.7f}")
    for job in jobs[:2]:
        console.print(f"why {job['assigned_model']}: {job['assignment_reason']}")
