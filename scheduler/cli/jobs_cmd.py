"""Client commands: submit, status, wait, results, cancel, models, workers (over the REST API)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from scheduler.cli.common import clean_errors, client, fail
from scheduler.client import SwitchyardClient
from scheduler.errors import InvalidRequest

FINAL = {"succeeded", "failed", "cancelled", "expired"}


def register(app: typer.Typer) -> None:
    app.command()(submit)
    app.command()(status)
    app.command()(wait)
    app.command()(results)
    app.command()(cancel)
    app.command()(models)
    app.command()(workers)


@clean_errors
def submit(
    prompt: Annotated[Optional[str], typer.Argument(help="The prompt; omit and use --file for many.")] = None,
    file: Annotated[Optional[Path], typer.Option("--file", "-f", help="JSONL: one job object (or string) per line.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Most tokens to generate (per job unless the line says).")] = 128,
    model: Annotated[Optional[list[str]], typer.Option("--model", "-m", help="Allowed model(s).")] = None,
    min_quality: Annotated[Optional[float], typer.Option(help="Per-job floor on predicted success.")] = None,
    alpha: Annotated[Optional[float], typer.Option(help="Mean predicted success for the batch.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Batch name.")] = None,
    idempotency_key: Annotated[Optional[str], typer.Option(help="Repeat-safe key for this submit.")] = None,
) -> None:
    """Submit one prompt, or a JSONL file of prompts as one batch. Prints the job or batch id."""
    defaults: dict[str, Any] = {"max_tokens": max_tokens}
    if model:
        defaults["allowed_models"] = model
    if min_quality is not None:
        defaults["min_quality"] = min_quality
    with client() as api:
        if file is None:
            if not prompt:
                fail("give a prompt, or --file with a JSONL file of jobs")
            job = api.submit_job({"prompt": prompt, "idempotency_key": idempotency_key, **defaults})
            typer.echo(job["id"])
            return
        jobs = [defaults | line for line in read_jobs_file(file)]
        created = api.submit_batch({"jobs": jobs, "alpha": alpha, "name": name or file.name,
                                    "idempotency_key": idempotency_key})
        typer.echo(created["id"])
        typer.echo(f"{len(created['job_ids'])} jobs submitted", err=True)


def read_jobs_file(path: Path) -> list[dict[str, Any]]:
    """Each non-empty line: a JSON object with job fields, or a JSON string (the prompt)."""
    if not path.is_file():
        raise InvalidRequest(f"no such file: {path}")
    jobs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
        if isinstance(value, str):
            value = {"prompt": value}
        if not isinstance(value, dict):
            raise InvalidRequest(f"{path}:{number}: expected a JSON object or string")
        jobs.append(value)
    if not jobs:
        raise InvalidRequest(f"{path} holds no jobs")
    return jobs


@clean_errors
def status(job_id: Annotated[str, typer.Argument(help="A job id, or a batch id with --batch.")],
           batch: Annotated[bool, typer.Option("--batch", help="The id is a batch.")] = False) -> None:
    """Show a job (status, model, reason, result, every attempt) or a batch's counts."""
    with client() as api:
        data = api.batch(job_id) if batch else api.job(job_id)
    typer.echo(json.dumps(data, indent=2))
    if not batch:
        for line in attempt_lines(data):
            typer.echo(line, err=True)


def attempt_lines(job: dict[str, Any]) -> list[str]:
    """A person's summary of a job's state and attempts (on stderr, after the JSON)."""
    status = job.get("status")
    lines = []
    if status == "reviewing":
        lines.append("reviewing: answered; the scheduler is judging the answer(s) before it accepts one or "
                     "escalates to a stronger model")
    elif status == "pending" and job.get("escalate_to"):
        lines.append(f"pending: escalated to {job['escalate_to']} (its earlier answers were judged too weak)")
    for attempt in job.get("attempt_history") or []:
        p_post = attempt.get("p_post")
        judged = f" p_post={p_post:.2f}" if p_post is not None else ""
        cost = attempt.get("cost_usd")
        spent = f" ${cost:.7f}" if cost is not None else ""
        mark = " <- the result" if attempt.get("accepted") else ""
        lines.append(f"attempt {attempt['attempt']} {attempt['model']}: {attempt.get('decision') or 'awaiting review'}"
                     f"{judged}{spent}; {attempt.get('reason') or ''}{mark}")
    return lines


@clean_errors
def wait(ids: Annotated[list[str], typer.Argument(help="Job ids, or one batch id with --batch.")],
         batch: Annotated[bool, typer.Option("--batch", help="Wait for a whole batch.")] = False,
         timeout_s: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 3600.0,
         poll_s: Annotated[float, typer.Option(help="Seconds between polls.")] = 1.0) -> None:
    """Wait until the jobs (or the batch) are finished, with a progress bar."""
    with client() as api:
        done = wait_until_done(api, ids, batch=batch, timeout_s=timeout_s, poll_s=poll_s, console=Console(stderr=True))
    if not done:
        fail(f"not finished after {timeout_s:.0f}s", code=2)


def wait_until_done(api: SwitchyardClient, ids: list[str], *, batch: bool, timeout_s: float, poll_s: float,
                    console: Console) -> bool:
    deadline = time.monotonic() + timeout_s
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("jobs finished", total=None)
        while True:
            finished, total, label = _progress(api, ids, batch)
            progress.update(task, completed=finished, total=total, description=label)
            if finished == total:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(poll_s)


def _progress(api: SwitchyardClient, ids: list[str], batch: bool) -> tuple[int, int, str]:
    if batch:
        summary = api.batch(ids[0])
        counts = summary["counts"]
        finished = sum(n for s, n in counts.items() if s in FINAL)
        label = " ".join(f"{s}={n}" for s, n in sorted(counts.items()))
        return finished, summary["num_jobs"], label
    statuses = [api.job(job_id)["status"] for job_id in ids]
    return sum(s in FINAL for s in statuses), len(ids), "jobs finished"


@clean_errors
def results(batch_id: Annotated[str, typer.Argument(help="The batch whose results to write.")],
            out: Annotated[Optional[Path], typer.Option("--out", "-o", help="File (default: stdout).")] = None) -> None:
    """Write a batch's jobs as JSONL: id, status, model, text, tokens, cost, latency, error."""
    with client() as api:
        jobs = api.jobs(batch_id=batch_id)
    keys = ("id", "status", "assigned_model", "prompt", "messages", "result_text", "finish_reason",
            "input_tokens", "output_tokens", "cost_usd", "latency_s", "error", "metadata", "attempts",
            "accepted_attempt")
    lines = [json.dumps({k: job[k] for k in keys}) for job in sorted(jobs, key=lambda j: j["created_at"])]
    text = "\n".join(lines) + ("\n" if lines else "")
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)
        typer.echo(f"{len(lines)} results written to {out}", err=True)


@clean_errors
def cancel(job_id: str) -> None:
    """Cancel a pending or queued job."""
    with client() as api:
        typer.echo(api.cancel(job_id)["status"])


@clean_errors
def models() -> None:
    """List the fleet's models (and "auto", the scheduler's choice), their prices and live workers."""
    with client() as api:
        for model in api.models():
            typer.echo(json.dumps(model))


@clean_errors
def workers() -> None:
    """List live workers: model, host, jobs done, measured tokens/s and latency."""
    with client() as api:
        for worker in api.workers():
            typer.echo(json.dumps(worker))
