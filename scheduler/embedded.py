"""The embedded stack: API, scheduler and one worker per model as child processes on one machine.

Used by ``switchyard up`` and ``switchyard demo``. The processes are the same commands production
runs (``switchyard api|scheduler|worker``); only the settings differ (SQLite, kombu over SQLite).

Each child runs in its own process group (so a Ctrl-C in the terminal reaches only the parent, which
stops the children in order). Stopping sends SIGTERM to each child, waits for the graceful exits, then
SIGKILLs each child's whole group, which also takes the Celery pool processes a worker may leave
behind. With ``stop_on_signals``, SIGTERM, SIGINT and SIGHUP sent to the parent stop the stack too.

The API needs a key like any other: the stack makes one for the tenant ``local`` at start
(``stack.api_key``) and, given ``api_key_file``, keeps it there for the CLI and reuses it next time.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, Self

from scheduler.client import SwitchyardClient
from scheduler.errors import SwitchyardError
from scheduler.fleet import load_fleet
from scheduler.settings import Settings
from scheduler.storage import Database, TenantStore, utcnow
from scheduler.storage.migrate import upgrade_database

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
LOCAL_TENANT = "local"


class StackFailed(SwitchyardError):
    """A process of the embedded stack exited early; see its log."""


class StopRequested(BaseException):
    """A stop signal reached the stack's parent process.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on its way out swallows
    it: it unwinds to the stack's ``with``, whose exit stops every child.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by this signal (143 for SIGTERM)."""
        return 128 + self.signum


class EmbeddedStack:
    def __init__(self, settings: Settings, log_dir: Path, api_port: int = 8000,
                 worker_models: list[str] | None = None, stop_on_signals: bool = False,
                 api_key_file: Path | None = None) -> None:
        """``stop_on_signals``: while the stack is used as a context manager, SIGTERM, SIGINT and
        SIGHUP raise StopRequested in the main thread (the commands that own the process set it;
        tests leave the test runner's handlers alone). A second signal while stopping skips the
        wait for graceful exits and kills at once. ``api_key_file``: where the local tenant's key
        is kept (mode 0600) for the CLI; None keeps it only in ``api_key``."""
        self.settings = settings
        self.api_key_file = api_key_file
        self.api_key = ""                       # the local tenant's key, made by start()
        self.log_dir = log_dir
        self.api_port = api_port
        self.worker_models = worker_models if worker_models is not None else load_fleet(settings.fleet_file).names
        self.stop_on_signals = stop_on_signals
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._env: dict[str, str] = {}
        self._previous_handlers: dict[int, Any] = {}
        self._stop_signal: int | None = None    # the first stop signal, once one arrived
        self._defer_stop_signal = False         # set while a child is being spawned
        self._stopping = False
        self._hurry = False                     # a second signal: kill without waiting
        self._reaped: set[subprocess.Popen[bytes]] = set()  # stopped and waited for: never signal again

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> None:
        upgrade_database(self.settings.database_url)
        self.api_key = self._local_api_key()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # Every child process gets exactly this stack's settings.
        self._env = os.environ | self.settings.as_environment()
        self._env["SWITCHYARD_API_URL"] = self.api_url
        self.spawn("api", ["api", "--port", str(self.api_port)])
        self.spawn("scheduler", ["scheduler"])
        for index, model in enumerate(self.worker_models):
            name = f"worker-{model}" if self.worker_models.count(model) == 1 else f"worker-{model}-{index}"
            # One pool process per worker here: the workers' metrics ports follow one another.
            metrics_port = self.settings.worker_metrics_port + index if self.settings.worker_metrics_port else 0
            self.spawn(name, ["worker", "--model", model, "--metrics-port", str(metrics_port)])

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        """Until the API answers and every worker has loaded its model and reported in."""
        deadline = time.monotonic() + timeout_s
        with SwitchyardClient(self.api_url, self.api_key) as client:
            while time.monotonic() < deadline:
                self.check_alive()
                if client.ready() and self.live_worker_count(client) >= len(self.worker_models):
                    return
                time.sleep(0.5)
        raise StackFailed(f"the stack was not ready after {timeout_s:.0f}s; logs in {self.log_dir}")

    def _local_api_key(self) -> str:
        """The key in ``api_key_file`` while this database still accepts it, else a new key of the
        local tenant (written to the file): restarting `up` keeps the key the CLI already has."""
        try:
            kept = self.api_key_file.read_text().strip() if self.api_key_file else ""
        except OSError:
            kept = ""
        db = Database(self.settings.database_url)
        try:
            store = TenantStore(db)
            holder = store.key_owner(kept) if kept else None
            if holder is not None and not holder.revoked:
                return kept
            key = store.create_key(LOCAL_TENANT, utcnow(), name="switchyard up").key
        finally:
            db.dispose()
        if self.api_key_file is not None:
            self.api_key_file.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self.api_key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as file:
                file.write(key + "\n")
            os.chmod(self.api_key_file, 0o600)  # a file that existed keeps its old mode through open()
        return key

    @staticmethod
    def live_worker_count(client: SwitchyardClient) -> int:
        # One heartbeat per worker pool process; the stack starts each worker with one process.
        return len(client.workers())

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise StackFailed(f"{name} exited with code {process.returncode}; see {self.log_dir / name}.log")

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop every child: SIGTERM first, so each stops gracefully (Celery finishes or hands back
        its current task, the scheduler ends its tick), then, after ``timeout_s`` or at once on a
        second stop signal, SIGKILL to each child's process group: whatever is left of it, such as
        pool processes whose worker died before them."""
        self._stopping = True
        running = [name for name, process in self.processes.items() if not _has_exited(process)]
        if running:
            log.info("stopping %s", ", ".join(running))
        for name in running:
            # Not Popen.send_signal: it reaps an exited child, and the pid must stay ours (see below).
            _signal_quietly(os.kill, self.processes[name].pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while (not self._hurry and time.monotonic() < deadline
               and not all(_has_exited(process) for process in self.processes.values())):
            time.sleep(0.1)
        for name, process in self.processes.items():
            if process in self._reaped:
                continue
            if not _has_exited(process):
                log.warning("%s did not stop in time; killing it", name)
            # The group id is the child's pid, which stays ours until the wait below reaps it (or,
            # for a child that died earlier and was reaped by check_alive, while its group has members).
            _signal_quietly(os.killpg, process.pid, signal.SIGKILL)
            process.wait()
            self._reaped.add(process)

    def __enter__(self) -> Self:
        if self.stop_on_signals:
            for signum in STOP_SIGNALS:
                self._previous_handlers[signum] = signal.signal(signum, self._on_stop_signal)
        try:
            self.start()
        except BaseException:
            # A failure or a stop signal halfway through starting: stop what did start.
            self._stop_and_restore_signals()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self._stop_and_restore_signals()

    def _stop_and_restore_signals(self) -> None:
        try:
            self.stop()
        finally:
            for signum, handler in self._previous_handlers.items():
                # None: a handler installed outside Python; the default is the nearest we can restore.
                signal.signal(signum, signal.SIG_DFL if handler is None else handler)
            self._previous_handlers.clear()

    def _on_stop_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._stopping or self._stop_signal is not None:
            self._hurry = True
            return
        self._stop_signal = signum
        if not self._defer_stop_signal:
            raise StopRequested(signum)

    @contextmanager
    def _stop_signal_deferred(self) -> Iterator[None]:
        """Hold a stop signal back until the block is done: raised inside Popen, it would leave a
        child running that ``self.processes`` does not know, and so nothing would stop."""
        self._defer_stop_signal = True
        try:
            yield
        finally:
            self._defer_stop_signal = False
        if self._stop_signal is not None and not self._stopping:
            raise StopRequested(self._stop_signal)

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        """Start ``switchyard ARGS`` as a child in its own process group, logging to NAME.log."""
        # The child writes to its own copy of the file descriptor; the parent's closes with the block.
        with (self.log_dir / f"{name}.log").open("ab") as log_file, self._stop_signal_deferred():
            process = subprocess.Popen([sys.executable, "-m", "scheduler.cli", *args], env=self._env,
                                       stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
            self.processes[name] = process
        return process


def _has_exited(process: subprocess.Popen[bytes]) -> bool:
    """Whether the child has exited, without reaping it (WNOWAIT): until it is reaped its pid, which
    is also its process group's id, cannot be given to another process, so killpg stays safe."""
    if process.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # reaped elsewhere
        return True


def _signal_quietly(send: Any, *args: Any) -> None:
    """Send a signal to a process or group that may already be gone."""
    try:
        send(*args)
    except ProcessLookupError:
        pass
