"""A benchmark instrument: the real Switchyard worker hosting a zero-latency echo model.

    SWITCHYARD_DATABASE_URL=... SWITCHYARD_BROKER_URL=... SWITCHYARD_FLEET_FILE=... \\
        python benchmarks/echo_worker.py --model echo

Everything a production worker does runs unchanged (Celery consumer, the batch runner's claim and
result writes, heartbeats) except the model: ``EchoBackend`` answers at once, so the time a job
takes is Switchyard's own overhead. Not a product backend: it is not in the registry and no fleet
file can name it; this script swaps it in for whatever backend the fleet entry names.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scheduler.fleet import ModelSpec
from scheduler.settings import Settings
from workers import tasks
from workers.backends.base import Backend, GenerationRequest, GenerationResult


class EchoBackend(Backend):
    """Answers each request with its own prompt; one token per word."""

    def generate(self, request: GenerationRequest) -> GenerationResult:
        started = time.perf_counter()
        text = request.prompt or " ".join(m["content"] for m in request.messages or [])
        words = len(text.split())
        return GenerationResult(text=text, finish_reason="stop", input_tokens=words,
                                output_tokens=min(words, request.max_tokens),
                                latency_s=time.perf_counter() - started)


def echo_backend(_spec: ModelSpec, _settings: Settings) -> Backend:
    return EchoBackend()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the fleet entry this worker consumes for")
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()
    # The worker loads its model after Celery forks its pool; the children inherit this patch.
    with mock.patch.object(tasks, "make_backend", echo_backend):
        tasks.run_worker(Settings(), args.model, args.concurrency, loglevel="WARNING")


if __name__ == "__main__":
    main()
