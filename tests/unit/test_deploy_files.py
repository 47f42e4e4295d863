"""docker-compose.yml (no Docker engine here to run it): parses, and wires what the README promises."""
from __future__ import annotations

from pathlib import Path

import yaml

from scheduler.fleet import load_fleet
from scheduler.settings import Settings
from workers.tasks import worker_argv

ROOT = Path(__file__).resolve().parents[2]


def test_compose_has_every_service_and_flower_auth() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "api", "scheduler", "flower", "worker-gpu"} <= set(services)
    workers = {name: s for name, s in services.items() if name.startswith("worker-") and "profiles" not in s}
    hosted = {s["command"][s["command"].index("--model") + 1] for s in workers.values()}
    assert hosted == set(load_fleet(Settings().fleet_file).names)  # one worker per default CPU model
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    assert any(arg.startswith("--basic-auth=") for arg in services["flower"]["command"])
    for name in ("api", "scheduler", *workers):
        assert services[name]["environment"]["SWITCHYARD_BROKER_URL"].startswith("redis://")


def test_workers_send_events_for_flower() -> None:
    argv = worker_argv("smollm2-135m", concurrency=1, loglevel="INFO")
    assert "-E" in argv and argv[argv.index("-Q") + 1] == "model.smollm2-135m"


def test_compose_and_readme_say_how_to_make_the_first_key() -> None:
    """Every /v1 request needs a key, so a fresh deployment must say how the first one is made."""
    command = "switchyard keys create --tenant ops --admin"
    assert command in (ROOT / "docker-compose.yml").read_text()
    assert command in (ROOT / "README.md").read_text()
