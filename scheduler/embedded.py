"""The embedded stack: API, scheduler and one worker per model as child processes on one machine.

Used by ``switchyard up`` and ``switchyard demo``. The processes are the same commands production
runs (``switchyard api|scheduler|worker``); only the settings differ (SQLite, kombu over SQLite).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from scheduler.client import SwitchyardClient
from scheduler.errors import SwitchyardError
from scheduler.fleet import load_fleet
from scheduler.settings import Settings
from scheduler.storage.migrate import upgrade_database


class StackFailed(SwitchyardError):
    """A process of the embedded stack exited early; see its log."""


class EmbeddedStack:
    def __init__(self, settings: Settings, log_dir: Path, api_port: int = 8000,
                 worker_models: list[str] | None = None) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.api_port = api_port
        self.worker_models = worker_models if worker_models is not None else load_fleet(settings.fleet_file).names
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._env: dict[str, str] = {}

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> None:
        upgrade_database(self.settings.database_url)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # Every child process gets exactly this stack's settings.
        self._env = os.environ | self.settings.as_environment()
        self._env["SWITCHYARD_API_URL"] = self.api_url
        self.spawn("api", ["api", "--port", str(self.api_port)])
        self.spawn("scheduler", ["scheduler"])
        for index, model in enumerate(self.worker_models):
            name = f"worker-{model}" if self.worker_models.count(model) == 1 else f"worker-{model}-{index}"
            self.spawn(name, ["worker", "--model", model])

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        """Until the API answers and every worker has loaded its model and reported in."""
        deadline = time.monotonic() + timeout_s
        with SwitchyardClient(self.api_url, self.settings.owner) as client:
            while time.monotonic() < deadline:
                self.check_alive()
                if client.ready() and self.live_worker_count(client) >= len(self.worker_models):
                    return
                time.sleep(0.5)
        raise StackFailed(f"the stack was not ready after {timeout_s:.0f}s; logs in {self.log_dir}")

    @staticmethod
    def live_worker_count(client: SwitchyardClient) -> int:
        # One heartbeat per worker pool process; the stack starts each worker with one process.
        return len(client.workers())

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise StackFailed(f"{name} exited with code {process.returncode}; see {self.log_dir / name}.log")

    def stop(self, timeout_s: float = 20.0) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in self.processes.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> EmbeddedStack:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        """Start ``switchyard ARGS`` as a child in its own process group, logging to NAME.log."""
        log = (self.log_dir / f"{name}.log").open("ab")
        process = subprocess.Popen([sys.executable, "-m", "scheduler.cli", *args], env=self._env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        self.processes[name] = process
        return process
