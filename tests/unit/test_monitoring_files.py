"""The monitoring profile of docker-compose.yml, Prometheus's scrape configuration and the Grafana
dashboard (no Docker engine here): they parse, agree with one another, and the dashboard asks only
for metrics Switchyard defines."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from scheduler.metrics import ApiMetrics, SchedulerMetrics, StoreCollector, WorkerMetrics
from workers.runner import FAILURE_KINDS

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "switchyard.json"
PANEL_TYPES = {"row", "timeseries", "stat", "bargauge", "table", "gauge"}
# Suffixes Prometheus adds to a family's samples.
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_info", "_created")


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def prometheus() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def defined_metric_names() -> set[str]:
    """Every sample name Switchyard's registries can expose."""
    registry = CollectorRegistry()
    ApiMetrics(registry)
    SchedulerMetrics(registry, ["m"])
    WorkerMetrics(registry, "m", FAILURE_KINDS, tokens_per_s=lambda: 1.0, running_jobs=lambda: 0)
    families = list(registry.collect())
    families += StoreCollector(None, lambda: True, None, quality_window_s=1.0, max_series=1).describe()  # type: ignore[arg-type]
    names = {family.name for family in families}
    names |= {sample.name for family in families for sample in family.samples}
    return names | {name + suffix for name in names for suffix in SUFFIXES}


def scrape_jobs() -> dict[str, dict[str, Any]]:
    return {job["job_name"]: job for job in prometheus()["scrape_configs"]}


def test_monitoring_profile_runs_prometheus_and_grafana_on_loopback() -> None:
    services = compose()["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]
        assert all(port.startswith("127.0.0.1:") for port in services[name]["ports"])
        for volume in services[name]["volumes"]:
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repository"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    # Every service of the default stack stays out of the profile.
    assert all("profiles" not in services[name] for name in ("api", "scheduler", "worker-smollm2", "flower"))


def test_flower_is_off_the_public_port() -> None:
    """Flower's /metrics answers without its basic auth: never publish it on every interface."""
    flower = compose()["services"]["flower"]
    assert all(str(port).startswith("127.0.0.1:") for port in flower.get("ports", []))


def test_prometheus_scrapes_every_process_on_the_ports_compose_configures() -> None:
    services = compose()["services"]
    env = services["scheduler"]["environment"]
    jobs = scrape_jobs()

    def targets(job: str) -> tuple[set[str], int]:
        (config,) = jobs[job]["dns_sd_configs"]
        assert config["type"] == "A"
        return set(config["names"]), int(config["port"])

    api_command = services["api"]["command"]
    assert targets("switchyard-api") == ({"api"}, int(api_command[api_command.index("--port") + 1]))
    assert targets("switchyard-scheduler") == ({"scheduler"}, int(env["SWITCHYARD_SCHEDULER_METRICS_PORT"]))
    workers = {name for name in services if name.startswith("worker-")}
    assert targets("switchyard-worker") == (workers, int(env["SWITCHYARD_WORKER_METRICS_PORT"]))
    assert env["SWITCHYARD_METRICS_HOST"] == "0.0.0.0"   # reachable from the prometheus container
    for name in ("scheduler", *workers):
        assert services[name]["environment"]["SWITCHYARD_METRICS_HOST"] == "0.0.0.0"
    assert str(env["SWITCHYARD_SCHEDULER_METRICS_PORT"]) in services["scheduler"]["expose"]
    assert all(str(env["SWITCHYARD_WORKER_METRICS_PORT"]) in services[w]["expose"] for w in workers)
    assert jobs["flower"]["static_configs"] == [{"targets": ["flower:5555"]}]


def test_grafana_provisions_the_datasource_and_the_dashboard_it_refers_to() -> None:
    grafana = ROOT / "deploy" / "grafana"
    (source,) = yaml.safe_load((grafana / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((grafana / "provisioning" / "dashboards" / "switchyard.yml").read_text())["providers"]
    mounts = dict(volume.split(":")[:2] for volume in compose()["services"]["grafana"]["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    uids = {panel["datasource"]["uid"] for panel in dashboard()["panels"] if "datasource" in panel}
    uids |= {t["datasource"]["uid"] for panel in dashboard()["panels"] for t in panel.get("targets", [])}
    assert uids == {source["uid"]}


def test_the_dashboard_is_well_formed() -> None:
    board = dashboard()
    assert board["uid"] == "switchyard" and board["title"] and isinstance(board["schemaVersion"], int)
    panels = board["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    occupied: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["type"] in PANEL_TYPES, panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        cells = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                 for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids)
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]


def test_the_dashboard_asks_only_for_metrics_that_exist() -> None:
    defined = defined_metric_names()
    used = {name for panel in dashboard()["panels"] for target in panel.get("targets", [])
            for name in re.findall(r"\bswitchyard_[a-z_]+", target["expr"])}
    assert used and not used - defined, sorted(used - defined)


@pytest.mark.parametrize("topic, metric", [
    ("throughput", "switchyard_worker_jobs_succeeded_total"),
    ("queue depth", "switchyard_model_backlog_jobs"),
    ("tick stages", "switchyard_scheduler_tick_stage_seconds_sum"),
    ("spend against", "switchyard_tenant_spend_cap_usd"),
    ("spend against", "switchyard_batch_spend_cap_usd"),
    ("promised vs realised", "switchyard_graded_realised_quality_ratio"),
])
def test_the_dashboard_shows_what_an_operator_needs(topic: str, metric: str) -> None:
    panels = [panel for panel in dashboard()["panels"] if topic in panel["title"].lower()]
    assert any(metric in target["expr"] for panel in panels for target in panel.get("targets", [])), topic
