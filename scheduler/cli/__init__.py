"""The ``switchyard`` command line. Each module adds its commands with ``register(app)``."""
from __future__ import annotations

import logging

import typer

from scheduler.cli import embedded_cmd, jobs_cmd, predictor_cmd, replay_cmd, services_cmd, tenants_cmd

app = typer.Typer(
    name="switchyard", no_args_is_help=True, pretty_exceptions_enable=False,
    help="Cost-optimal batch scheduling of LLM jobs. Settings come from SWITCHYARD_* variables "
         "(see `switchyard settings`).",
)
for module in (jobs_cmd, services_cmd, tenants_cmd, embedded_cmd, predictor_cmd, replay_cmd):
    module.register(app)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("httpx", "alembic"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    app()
