"""Service commands: api, scheduler, worker, tick, db upgrade, settings."""
from __future__ import annotations

import json
import signal
import threading
from typing import Annotated, Optional

import typer

from scheduler.cli.common import clean_errors, fail, settings
from scheduler.settings import Settings


def register(app: typer.Typer) -> None:
    app.command()(api)
    app.command(name="scheduler")(scheduler_loop)
    app.command()(worker)
    app.command()(tick)
    app.command(name="settings")(show_settings)
    db = typer.Typer(help="Database maintenance.", no_args_is_help=True)
    db.command()(upgrade)
    app.add_typer(db, name="db")


@clean_errors
def api(host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="Port to bind.")] = 8000) -> None:
    """Serve the REST API (OpenAPI docs at /docs)."""
    import uvicorn

    from scheduler.api.app import create_app
    from scheduler.fleet import load_fleet
    from scheduler.storage import Database

    current = settings()
    app = create_app(current, Database(current.database_url), load_fleet(current.fleet_file))
    uvicorn.run(app, host=host, port=port, log_level="info")


@clean_errors
def scheduler_loop() -> None:
    """Run the scheduling loop: one leader ticks every SWITCHYARD_TICK_INTERVAL_S seconds."""
    from scheduler.loop import Scheduler

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    Scheduler.from_settings(settings()).run_forever(stop)


@clean_errors
def worker(model: Annotated[str, typer.Option("--model", "-m", help="The fleet model this worker hosts.")],
           concurrency: Annotated[int, typer.Option(help="Worker processes (each loads the model).")] = 1,
           loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
           pool: Annotated[Optional[str], typer.Option(
               help="Celery pool: prefork (default for CPU/HTTP models) or solo (default for vLLM).")] = None,
           metrics_port: Annotated[Optional[int], typer.Option(
               min=0, max=65_535, help="First pool process's Prometheus /metrics port; the others follow it "
               "(default: SWITCHYARD_WORKER_METRICS_PORT; 0 = none).")] = None) -> None:
    """Run a Celery worker that hosts MODEL and consumes its queue model.MODEL."""
    from workers.tasks import run_worker

    if pool not in (None, "prefork", "solo"):
        fail(f"--pool must be prefork or solo, not {pool!r}")
    run_worker(settings(), model, concurrency, loglevel, pool, metrics_port)


@clean_errors
def tick(dry_run: Annotated[bool, typer.Option("--dry-run", help="Plan only: print it, write nothing.")] = False,
         as_json: Annotated[bool, typer.Option("--json", help="Print the whole plan as JSON.")] = False) -> None:
    """Run one scheduling tick now and print its plan."""
    from scheduler.loop import Scheduler
    from scheduler.storage import utcnow
    from scheduler.storage.leader import LeaderLock

    scheduler = Scheduler.from_settings(settings())
    if dry_run:
        report = scheduler.tick(dry_run=True)
    else:
        # A tick that commits is a leader's tick: take leadership for it, or leave it to the one who has it.
        leader = LeaderLock(scheduler.db)
        try:
            term = leader.try_acquire(utcnow())
            if term is None:
                fail("a running scheduler leads the tick; use --dry-run to see its next plan")
            report = scheduler.tick(term=term)
        finally:
            leader.release()
    if as_json:
        typer.echo(json.dumps(report.plan.to_dict(), indent=2))
        return
    for assignment in report.plan.assignments:
        typer.echo(f"assign {assignment.job_id} -> {assignment.model}: {assignment.reason}")
    for deferral in report.plan.deferrals:
        typer.echo(f"{deferral.ending.value if deferral.ending else 'defer'} {deferral.job_id}: {deferral.reason}")
    for note in report.plan.notes:
        typer.echo(f"note: {note}")
    typer.echo(report.summary())


@clean_errors
def upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Apply the database migrations (Postgres or SQLite)."""
    from scheduler.storage.migrate import upgrade_database

    current = settings()
    upgrade_database(current.database_url, revision)
    typer.echo(f"database at {revision}: {current.database_url}")


def show_settings() -> None:
    """Print every setting, its environment variable, current value and meaning."""
    current = settings()
    for name, field in Settings.model_fields.items():
        typer.echo(f"SWITCHYARD_{name.upper()}={getattr(current, name)}\n    {field.description}")
