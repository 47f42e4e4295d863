"""The rooms of the house and which way their imports run (docs/architecture.md).

Read from the source with ``ast`` (function-level imports included), so a rule broken anywhere
fails here, not in a reviewer's head.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def modules() -> dict[str, set[str]]:
    """module name -> every module it imports."""
    found: dict[str, set[str]] = {}
    for package in ("scheduler", "workers"):
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            imports: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imports.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    imports.add(node.module)
            found[name] = imports
    return found


MODULES = modules()


def importers_of(prefix: str) -> set[str]:
    return {name for name, imports in MODULES.items()
            if any(i == prefix or i.startswith(prefix + ".") for i in imports)}


def in_room(name: str, *rooms: str) -> bool:
    return any(name == room or name.startswith(room + ".") for room in rooms)


def test_the_control_plane_never_imports_the_data_plane() -> None:
    # The CLI is the one entry point of both planes: `switchyard worker` starts a worker.
    assert {m for m in importers_of("workers") if in_room(m, "scheduler") and not in_room(m, "scheduler.cli")} == set()


def test_only_storage_speaks_sql() -> None:
    assert {m for m in importers_of("sqlalchemy") if not in_room(m, "scheduler.storage")} == set()


@pytest.mark.parametrize("engine", ["llama_cpp", "vllm", "httpx"])
def test_model_engines_are_imported_only_by_their_backends(engine: str) -> None:
    allowed = ("workers.backends", "scheduler.client")   # the CLI's HTTP client is httpx too
    assert {m for m in importers_of(engine) if not in_room(m, *allowed)} == set()


def test_the_decision_imports_no_broker_no_database_and_no_web() -> None:
    pure = ("scheduler.optimizer", "scheduler.policy", "scheduler.plan", "scheduler.estimates", "scheduler.urgency",
            "scheduler.costs", "scheduler.predictor", "scheduler.learning.exploration", "scheduler.cascade",
            "scheduler.cascade_columns", "scheduler.cascade_fit", "scheduler.review", "scheduler.judging")
    outside = ("celery", "kombu", "sqlalchemy", "fastapi", "scheduler.storage", "scheduler.settings", "scheduler.api")
    broken = {(m, i) for m, imports in MODULES.items() if in_room(m, *pure)
              for i in imports if in_room(i, *outside)}
    # The MiniLM featuriser is not pure: a pickled predictor loads its ONNX model from disk when
    # first used, and where from (and with how many threads) is read from the settings then.
    assert broken <= {("scheduler.predictor.embeddings", "scheduler.settings")}


def test_the_tick_publishes_through_its_dispatcher_not_celery() -> None:
    assert not {i for i in MODULES["scheduler.tick"] if in_room(i, "celery", "kombu", "scheduler.dispatch")}


def test_the_policy_and_learning_import_one_way() -> None:
    assert not {i for i in MODULES["scheduler.policy"] if in_room(i, "scheduler.learning.learner")}
    assert {m for m in importers_of("scheduler.policy") if in_room(m, "scheduler.learning")} == set()
