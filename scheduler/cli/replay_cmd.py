"""CLI: ``switchyard replay`` and ``switchyard datasets convert``.

The main CLI calls :func:`register` to add these commands; everything they do lives in
:mod:`scheduler.replay` and :mod:`scheduler.datasets` -- this module only parses and prints.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from scheduler.errors import SwitchyardError

_SOLVERS = {
    "exact-highs": ("exact", "highs"),
    "exact-cbc": ("exact", "cbc"),
    "fast": ("fast", "highs"),
}


def replay(
    dataset: Annotated[Path, typer.Argument(help="Outcome dataset NAME.jsonl (interchange format).")],
    models: Annotated[Path | None, typer.Option(help="Price table; default NAME.models.json beside it.")] = None,
    alpha: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="One quality target.")] = None,
    sweep: Annotated[bool, typer.Option("--sweep", help="Sweep alpha from the worst model to the oracle.")] = False,
    window: Annotated[int | None, typer.Option(min=1, help="Jobs per scheduling window (default 256; "
                                                           "--online: 50).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON here.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write the cost-quality frontier PNG here.")] = None,
    predictor: Annotated[str | None, typer.Option(help="Predictor for the switchyard policy (default switchyard; "
                                                       "--online: linear).")] = None,
    solver: Annotated[str, typer.Option(help="Optimizer for switchyard and the oracle: fast, exact-highs or "
                                              "exact-cbc (ECCOS ILP always uses exact-cbc).")] = "fast",
    margin: Annotated[str, typer.Option(help="Safety margin: cv (bias by CV on train + noise), noise, none.")] = "cv",
    use_task: Annotated[bool, typer.Option("--use-task/--no-task", help="Give predictors the task labels.")] = True,
    assumed_output_tokens: Annotated[int, typer.Option(min=0, help="Output tokens where none are logged.")] = 256,
    time_limit_s: Annotated[float, typer.Option(min=0.01, help="Solver time limit per window.")] = 10.0,
    shuffle: Annotated[bool, typer.Option("--shuffle/--file-order", help="Arrival order of test jobs.")] = True,
    seed: Annotated[int, typer.Option(help="Seed for arrival order, random policy and CV folds.")] = 0,
    refine_steps: Annotated[int, typer.Option(min=0, max=20, help="Bisection steps on alpha where each policy's "
                                                                 "curve first reaches the best model (0 = the "
                                                                 "swept alphas only).")] = 6,
    cascade: Annotated[bool, typer.Option("--cascade", help="Add the switchyard-cascade curve: the policy may run a "
                                                            "cheap model first and escalate on the post-hoc p of "
                                                            "its answer (needs logged answers).")] = False,
    online: Annotated[bool, typer.Option("--online", help="Learn online from bandit feedback on the test "
                                                          "stream, starting from the train split.")] = False,
    cold: Annotated[bool, typer.Option("--cold", help="Online, starting with no training data at all.")] = False,
    stream: Annotated[str, typer.Option(help="Online arrivals: test, or all (train + test rows; --cold "
                                             "only).")] = "test",
    refit_every: Annotated[int, typer.Option(min=0, help="Online: windows between refits; 0 = auto (about "
                                                         "8 refits over the stream, plus early ones on --cold).")] = 0,
    explore_target_labels: Annotated[int, typer.Option(min=0, help="Online: a model with fewer labels gets "
                                                                   "exploring jobs; 0 = never explore (production "
                                                                   "default).")] = 30,
    explore_budget: Annotated[float, typer.Option(min=0.0, max=1.0, help="Online: most of each window's jobs "
                                                                         "that may explore.")] = 0.1,
    promise_check_labels: Annotated[int, typer.Option(min=0, help="Online: recent labels whose promised-vs-"
                                                                  "realised gap is added to alpha; 0 = off (production default).")] = 0,
    repeats: Annotated[int, typer.Option(min=1, help="Online: runs with seeds seed, seed+1, ... (arrival order "
                                                     "and exploration draws); JSON and plot show the mean.")] = 1,
) -> None:
    """Fit on DATASET's train split, route its test split, and compare routing policies.

    With --online or --cold: route the stream window by window, reveal only the chosen model's
    outcome, refit, and report regret against the oracle (docs/replay-online.md)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from scheduler.datasets import read_dataset
    from scheduler.replay import ReplayConfig, run_replay
    from scheduler.replay.policies import SolverChoice

    if online or cold:
        if sweep:
            raise typer.BadParameter("--online/--cold run at one alpha: give --alpha or nothing (the default "
                                     "is the midpoint of the cheapest and the best single model's quality)")
        _replay_online(dataset, models, alpha, window or 50, json_out, plot, predictor or "linear", solver,
                       use_task, assumed_output_tokens, time_limit_s, shuffle, seed, cold, stream, refit_every,
                       explore_target_labels, explore_budget, promise_check_labels, repeats)
        return
    window = 256 if window is None else window
    predictor = predictor or "switchyard"
    if alpha is not None and sweep:
        raise typer.BadParameter("give either --alpha or --sweep, not both")
    if solver not in _SOLVERS:
        raise typer.BadParameter(f"--solver must be one of {sorted(_SOLVERS)}")
    if margin not in ("cv", "noise", "none"):
        raise typer.BadParameter("--margin must be cv, noise or none")
    method, backend = _SOLVERS[solver]
    config = ReplayConfig(
        alphas=(alpha,) if alpha is not None else None, window=window, predictor=predictor,
        solver=SolverChoice(method, backend, time_limit_s),
        eccos_solver=SolverChoice("exact", "cbc", time_limit_s),
        assumed_output_tokens=assumed_output_tokens, margin=margin, use_tasks=use_task,
        shuffle=shuffle, seed=seed, refine_steps=refine_steps, cascade=cascade,
    )
    err = Console(stderr=True)
    try:
        data = read_dataset(dataset, models)
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), console=err, transient=True) as bar:
            task = bar.add_task("replay", total=None)

            def progress(message: str, done: int, total: int) -> None:
                bar.update(task, description=message, completed=done, total=total)

            report = run_replay(data, config, progress)
        if json_out is not None:
            report.write_json(json_out)
        if plot is not None:
            from scheduler.replay.plot import plot_frontier

            plot_frontier(report, plot)
    except SwitchyardError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    _print_summary(report)


def _replay_online(dataset: Path, models: Path | None, alpha: float | None, window: int, json_out: Path | None,
                   plot: Path | None, predictor: str, solver: str, use_task: bool, assumed_output_tokens: int,
                   time_limit_s: float, shuffle: bool, seed: int, cold: bool, stream: str, refit_every: int,
                   explore_target_labels: int, explore_budget: float, promise_check_labels: int,
                   repeats: int) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from scheduler.datasets import read_dataset
    from scheduler.learning.exploration import Exploration
    from scheduler.replay.online import OnlineConfig, run_online_repeats
    from scheduler.replay.online_report import repeats_json
    from scheduler.replay.policies import SolverChoice

    if solver not in _SOLVERS:
        raise typer.BadParameter(f"--solver must be one of {sorted(_SOLVERS)}")
    if stream not in ("test", "all"):
        raise typer.BadParameter("--stream must be test or all")
    if stream == "all" and not cold:
        raise typer.BadParameter("--stream all needs --cold (a warm start learns from the train split)")
    method, backend = _SOLVERS[solver]
    config = OnlineConfig(
        alpha=alpha, window=window, refit_every=refit_every, predictor=predictor, cold=cold, stream=stream,
        exploration=Exploration(explore_budget, explore_target_labels), promise_check_labels=promise_check_labels,
        solver=SolverChoice(method, backend, time_limit_s),
        assumed_output_tokens=assumed_output_tokens, use_tasks=use_task, shuffle=shuffle, seed=seed,
    )
    err = Console(stderr=True)
    try:
        data = read_dataset(dataset, models)
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), console=err, transient=True) as bar:
            task = bar.add_task("online replay", total=None)

            def progress(message: str, done: int, total: int) -> None:
                bar.update(task, description=message, completed=done, total=total)

            reports = run_online_repeats(data, config, repeats, progress)
        if json_out is not None:
            if repeats == 1:
                reports[0].write_json(json_out)
            else:
                json_out.write_text(json.dumps(repeats_json(reports), indent=2) + "\n", encoding="utf-8")
        if plot is not None:
            from scheduler.replay.online_plot import plot_online

            plot_online(reports, plot)
    except SwitchyardError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    _print_online_summary(reports)


def _print_online_summary(reports: list) -> None:
    from rich.console import Console
    from rich.table import Table

    from scheduler.replay.online_report import OnlineReport, summarise_runs

    assert reports and isinstance(reports[0], OnlineReport)
    report = reports[0]
    best = report.best_single
    seeds = f", mean over {len(reports)} seeds" if len(reports) > 1 else ""
    table = Table(title=f"{report.dataset} {report.mode} ({report.stream} stream, {report.n_stream} arrivals, "
                        f"start {report.n_history_initial} rows): alpha {report.alpha:.3f}{seeds}; best single "
                        f"{best['model']} {best['quality']:.3f} at ${best['cost_usd']:.4g}")
    for col in ("policy", "quality", "cost share", "score regret", "cost regret", "first 1/4", "last 1/4"):
        table.add_column(col, justify="left" if col == "policy" else "right", no_wrap=True)
    for name, row in summarise_runs(reports).items():
        def mean(key: str, row: dict = row) -> float:
            return float(row[key]["mean"])

        table.add_row(
            name, f"{mean('quality'):.3f}", f"{mean('cost_share_of_best'):.1%}", f"{mean('score_regret'):.1f}",
            f"{mean('cost_regret_share'):.1%}",
            f"{mean('first_quarter_score_regret_per_job'):+.3f} / {mean('first_quarter_cost_regret_share'):+.1%}",
            f"{mean('last_quarter_score_regret_per_job'):+.3f} / {mean('last_quarter_cost_regret_share'):+.1%}",
        )
    console = Console(width=max(Console().width, 120))
    console.print(table)
    console.print("cost share / regret: share of the best single model's cost; first/last 1/4: regret per "
                  "arrival (score / cost share) over the first and the last quarter of the stream")


def _print_summary(report: object) -> None:
    from rich.console import Console
    from rich.table import Table

    from scheduler.replay import ReplayReport

    assert isinstance(report, ReplayReport)
    best = report.best_single
    table = Table(title=f"{report.dataset}: train {report.n_train}, test {report.n_test}; best single "
                        f"{best.model} quality {best.quality:.3f} at ${best.cost_usd:.4g}")
    for col in ("policy", "points", "best quality", "reach-best cost share", "alpha met", "area", "models/job",
                "escalated"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    runs = report.details.get("models_run_at_reach_best", {})
    for name, points in report.policies.items():
        reach = report.reach_best.get(name)
        met = report.alpha_met_rate.get(name)
        run = runs.get(name, {"models_run_per_job": 1.0, "share_escalated": 0.0})
        table.add_row(
            name, str(len(points)), f"{max(p.quality for p in points):.3f}",
            "-" if reach is None else f"{reach:.1%}", "-" if met is None else f"{met:.0%}",
            f"{report.area_under_curve.get(name, 0.0):.3f}", f"{run['models_run_per_job']:.2f}",
            f"{run['share_escalated']:.0%}",
        )
    Console(width=max(Console().width, 120)).print(table)
    if runs:
        Console().print("models/job, escalated: at the reach-best point, or the best-quality one if the curve "
                        "never reaches the best model (1 and 0% for policies that do not cascade)")


def convert(
    kind: Annotated[str, typer.Argument(help="routerbench, llmrouter, routellm-mmlu or routellm-gsm8k.")],
    src: Annotated[Path, typer.Argument(help="The raw data folder (e.g. shared/data/llmrouter_9models).")],
    out: Annotated[Path, typer.Argument(help="Output NAME.jsonl; NAME.models.json is written beside it.")],
) -> None:
    """Convert a public outcome log to the interchange format."""
    from scheduler.datasets import Split
    from scheduler.datasets import convert as run_convert

    try:
        data = run_convert(kind, src, out)
    except SwitchyardError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    n_train, n_test = len(data.split(Split.TRAIN)), len(data.split(Split.TEST))
    typer.echo(f"wrote {out}: {len(data.records)} records ({n_train} train, {n_test} test), "
               f"{len(data.models)} models; prices in {out.with_name(out.name.removesuffix('.jsonl'))}.models.json")


def register(app: typer.Typer) -> None:
    """Add ``replay`` and the ``datasets`` group (with ``convert``) to ``app``."""
    app.command("replay")(replay)
    datasets = typer.Typer(help="Outcome datasets in the interchange format.", no_args_is_help=True)
    datasets.command("convert")(convert)
    app.add_typer(datasets, name="datasets")
