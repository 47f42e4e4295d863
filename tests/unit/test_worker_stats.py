from __future__ import annotations

import pytest

from workers.heartbeat import WorkerStats


def test_stats_follow_recent_speed() -> None:
    stats = WorkerStats(smoothing=0.5)
    assert stats.snapshot() == (0, None, None)
    stats.add(jobs=2, output_tokens=100, generation_s=2.0)   # 50 tok/s, 1 s per job
    stats.add(jobs=1, output_tokens=10, generation_s=1.0)    # 10 tok/s, 1 s per job
    jobs, tokens_per_s, latency_s = stats.snapshot()
    assert jobs == 3
    assert tokens_per_s == pytest.approx(30.0) and latency_s == pytest.approx(1.0)
    stats.add(jobs=0, output_tokens=0, generation_s=0.0)     # a batch where everything was skipped
    assert stats.snapshot()[0] == 3
