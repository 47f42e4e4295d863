"""``switchyard predictor fit|show``: fit the predictor on outcomes and see what the tick uses."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from scheduler.cli.common import clean_errors, settings


def register(app: typer.Typer) -> None:
    predictor = typer.Typer(help="The outcome predictor the tick uses.", no_args_is_help=True)
    predictor.command()(fit)
    predictor.command()(show)
    app.add_typer(predictor, name="predictor")


@clean_errors
def fit(dataset: Annotated[Optional[list[Path]], typer.Option(
            "--dataset", help="Outcome data (interchange JSONL) to learn from besides the job history; kept, so "
                              "later refits (the scheduler's too) learn from it as well. Replaces what an earlier "
                              "--dataset imported.")] = None,
        split: Annotated[Optional[str], typer.Option(help="Use only this split of the datasets (train/test).")] = None,
        cascade: Annotated[bool, typer.Option(
            "--cascade", help="Also fit the cascade model and the answer judge on the datasets' answers (several "
                              "fleet models per job), so the tick may plan cascades and the review judge them.")] = False,
        ) -> None:
    """Fit the predictor on labelled job history (+ datasets) and save a new version for the tick."""
    from scheduler.datasets.io import read_dataset
    from scheduler.errors import InvalidRequest
    from scheduler.fleet import load_fleet
    from scheduler.learning.learner import Learner
    from scheduler.storage import Database, utcnow

    current = settings()
    learner = Learner(current, Database(current.database_url), load_fleet(current.fleet_file))
    if dataset:
        records = [r for path in dataset for r in read_dataset(path).records if split is None or r.split.value == split]
        learner.imported.replace(records)
        typer.echo(f"{len(records)} outcome records imported: every later refit learns from them "
                   f"({learner.imported.path})")
    elif split is not None:
        raise InvalidRequest("--split picks records of the --dataset files; give --dataset too")
    else:
        records = learner.imported.load()
        if records:
            typer.echo(f"learning from the {len(records)} outcome records imported earlier ({learner.imported.path})")
    version = learner.refit(utcnow(), records)
    typer.echo(f"predictor {current.predictor_kind} version {version} saved to {learner.versions.path(version)}")
    if cascade:
        version = learner.refit_cascade(utcnow(), records)
        strategies = learner.cascades.load(version).strategies
        typer.echo(f"cascade model version {version} ({len(strategies)} strategies) saved to "
                   f"{learner.cascades.path(version)}")
        version = learner.refit_judge(utcnow(), records)
        typer.echo(f"answer judge version {version} saved to {learner.judges.path(version)}")


@clean_errors
def show() -> None:
    """Which predictor version the tick would use, and how many labels each model has."""
    from scheduler.fleet import load_fleet
    from scheduler.learning.learner import Learner
    from scheduler.storage import Database

    current = settings()
    learner = Learner(current, Database(current.database_url), load_fleet(current.fleet_file))
    typer.echo(f"predictor: {learner.predictor().name}")
    for model, count in sorted(learner.labels.counts_by_model().items()):
        typer.echo(f"  {model}: {count} labelled outcomes")
