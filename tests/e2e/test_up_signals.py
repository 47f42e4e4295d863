"""`switchyard up` and `switchyard demo` stop everything they started when signalled.

Each test starts the real command as a subprocess (embedded defaults: SQLite, Celery over SQLite)
with a one-model echo fleet, signals it, and checks that every process it started is gone: the API,
the scheduler, the worker and the worker's Celery pool process. Each child runs in its own process
group (its pid is the group id), so "gone" means no live process left in any of those groups.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from scheduler.client import SwitchyardClient
from tests.conftest import free_port
from tests.e2e.faultkit import wait_for

pytestmark = pytest.mark.e2e
MODEL = "echo"
STARTUP_S = 180


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    parent: int
    group: int
    state: str


def processes() -> list[ProcessInfo]:
    """Every live (not zombie) process on the machine."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        # The command name (field 2) may hold spaces: split after its closing parenthesis.
        state, parent, group = stat.rsplit(")", 1)[1].split()[:3]
        if state not in ("Z", "X"):
            found.append(ProcessInfo(int(entry), int(parent), int(group), state))
    return found


def descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for info in processes():
        children.setdefault(info.parent, []).append(info.pid)
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def still_running(pids: set[int], groups: set[int]) -> list[ProcessInfo]:
    return [info for info in processes() if info.pid in pids or info.group in groups]


@dataclass
class Command:
    process: subprocess.Popen[bytes]
    output: Path
    api_url: str
    env: dict[str, str]
    seen_groups: set[int] = field(default_factory=set)  # to clean up after a failed test

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def started(self) -> tuple[set[int], set[int]]:
        """(every process below the command now, the process groups of its direct children)."""
        below = descendants(self.process.pid)
        groups = {info.pid for info in processes() if info.parent == self.process.pid}
        assert groups, "the command has no children"
        self.seen_groups |= groups
        return below, groups


@contextmanager
def switchyard(tmp_path: Path, command: str, delay_s: float = 0.0) -> Iterator[Command]:
    """``switchyard COMMAND`` on a free port with an echo fleet; killed with its groups if a test fails."""
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(f'''
[[models]]
name = "{MODEL}"
backend = "echo"
weights = "echo"
usd_per_second = 0.000001
max_batch_jobs = 1

[models.options]
delay_s = {delay_s}
''')
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    env["SWITCHYARD_FLEET_FILE"] = str(fleet)
    port = free_port()
    output = tmp_path / f"{command}.out"
    with output.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "scheduler.cli", command, "--port", str(port)],
                                   cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    running = Command(process, output, f"http://127.0.0.1:{port}", env)
    try:
        yield running
    finally:
        # After a failure, leave nothing behind: neither the command nor what it failed to stop.
        if process.poll() is None:
            running.started()
            process.kill()
        process.wait()
        for group in running.seen_groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass


def api_answers(url: str) -> bool:
    try:
        httpx.get(f"{url}/healthz", timeout=2)
        return True
    except httpx.TransportError:
        return False


def wait_until_up(command: Command) -> None:
    def up() -> bool:
        assert command.process.poll() is None, command.text()
        return "Switchyard is up" in command.text()

    wait_for(up, STARTUP_S, "switchyard up to be ready", interval_s=0.5)


def assert_all_gone(command: Command, started: tuple[set[int], set[int]], within_s: float) -> int:
    pids, groups = started
    try:
        code = command.process.wait(timeout=within_s)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the command did not exit within {within_s:.0f}s\n{command.text()}") from None
    # The children were reaped by the command; pool processes are waited for by their worker.
    wait_for(lambda: not still_running(pids, groups), 5, "every started process to be gone")
    return code


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_up_stops_everything_on_a_stop_signal(tmp_path: Path, signum: signal.Signals) -> None:
    with switchyard(tmp_path, "up") as command:
        wait_until_up(command)
        started = command.started()
        # API, scheduler, worker, and the worker's pool process at least.
        assert len(started[0]) >= 4, started
        assert len(started[1]) == 3, started
        command.process.send_signal(signum)
        code = assert_all_gone(command, started, within_s=30)
    assert code == 0, command.text()
    assert f"stopped ({signum.name})" in command.text()


def test_sighup_while_starting_stops_what_has_started(tmp_path: Path) -> None:
    with switchyard(tmp_path, "up") as command:
        # Usually before the worker has reported in (wait_ready); either way every child must go.
        wait_for(lambda: api_answers(command.api_url), STARTUP_S, "the API to answer")
        started = command.started()
        command.process.send_signal(signal.SIGHUP)
        code = assert_all_gone(command, started, within_s=30)
    assert code == 0, command.text()
    # Pool processes born after the snapshot are in their worker's group, which must be empty too.
    assert not still_running(set(), started[1])


def test_a_second_signal_kills_without_waiting_for_a_running_job(tmp_path: Path) -> None:
    with switchyard(tmp_path, "up", delay_s=120) as command:
        wait_until_up(command)
        # The CLI beside `up` finds the key `up` wrote to .switchyard/api-key (mode 0600): no setup.
        key_file = tmp_path / ".switchyard" / "api-key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        submitted = subprocess.run([sys.executable, "-m", "scheduler.cli", "submit", "a slow one", "--max-tokens", "4"],
                                   cwd=tmp_path, env=command.env | {"SWITCHYARD_API_URL": command.api_url},
                                   capture_output=True, text=True, timeout=60)
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.strip()
        with SwitchyardClient(command.api_url, key_file.read_text().strip()) as api:
            assert api.job(job_id)["owner"] == "local"
            wait_for(lambda: api.job(job_id)["status"] == "running", 60, "the job to run")
        started = command.started()
        command.process.send_signal(signal.SIGTERM)
        time.sleep(2)  # the worker is finishing its job (warm shutdown): the stack waits for it
        assert command.process.poll() is None, command.text()
        command.process.send_signal(signal.SIGTERM)
        code = assert_all_gone(command, started, within_s=10)
    assert code == 0, command.text()


def test_demo_stops_everything_and_says_it_did_not_finish(tmp_path: Path) -> None:
    with switchyard(tmp_path, "demo", delay_s=120) as command:
        wait_for(lambda: "Submitted batch" in command.text(), STARTUP_S, "the demo to submit its batch")
        started = command.started()
        command.process.send_signal(signal.SIGTERM)
        # The worker's warm shutdown waits for its running job until the stack's stop timeout (20 s).
        code = assert_all_gone(command, started, within_s=45)
    assert code == 128 + signal.SIGTERM, command.text()
    assert "before the demo finished" in command.text()
