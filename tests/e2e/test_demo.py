"""The README's first command runs to completion: `switchyard demo` on the embedded default
(SQLite + Celery over kombu's SQLAlchemy transport, no servers)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.e2e


def test_embedded_demo_answers_real_questions(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    env["COLUMNS"] = "200"
    finished = subprocess.run([sys.executable, "-m", "scheduler.cli", "demo", "--port", str(free_port())], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=600)
    output = finished.stdout + finished.stderr
    assert finished.returncode == 0, output
    assert "6/6 succeeded" in output
    assert "Paris" in output
    assert (tmp_path / ".switchyard" / "switchyard.db").exists()
    # The demo made its tenant's key and kept it for the CLI, readable by its owner only.
    key_file = tmp_path / ".switchyard" / "api-key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert key_file.read_text().strip() in output
