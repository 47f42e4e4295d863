"""The official ``openai`` client against the whole system: files.create -> batches.create ->
batches.retrieve until the batch ends -> files.content, every request answered by a real
llama.cpp worker (SmolLM2-135M and Gemma-3-270M), and chat.completions.create(model="auto")."""
from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from scheduler.client import SwitchyardClient
from scheduler.embedded import EmbeddedStack
from scheduler.storage import Database
from tests.conftest import free_port, make_settings

pytestmark = pytest.mark.e2e

FRANCE = "What is the capital of France?"
FINAL = {"completed", "expired", "cancelled", "failed"}


def chat_line(custom_id: str, question: str, model: str = "auto", **body: Any) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": {
        "model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 32, **body}})


def waiting_reasons(stack: EmbeddedStack, batch_id: str) -> list[tuple[str, str]]:
    """Why the batch's unfinished jobs wait (Switchyard's jobs listing), for a failure message."""
    with SwitchyardClient(stack.api_url, stack.api_key) as api:
        return [(job["status"], job["assignment_reason"]) for job in api.jobs(batch_id=batch_id)
                if job["status"] not in ("succeeded", "failed", "cancelled", "expired")]


def test_the_openai_client_runs_a_batch_and_a_chat_completion(pg_db: Database, redis_url: str,
                                                              tmp_path: Path) -> None:
    settings = make_settings(pg_db.url, redis_url, tick_interval_s=0.5, heartbeat_interval_s=1.0)
    with EmbeddedStack(settings, tmp_path / "logs", api_port=free_port()) as stack:
        stack.wait_ready(timeout_s=300)
        client = openai.OpenAI(base_url=stack.api_url + "/v1", api_key=stack.api_key)
        lines = [chat_line("france-auto", FRANCE),
                 chat_line("france-smollm2", FRANCE, model="smollm2-135m"),
                 chat_line("france-gemma", FRANCE, model="gemma-3-270m"),
                 chat_line("sum", "What is 2 + 2?", switchyard={"min_quality": 0.3})]
        uploaded = client.files.create(file=("questions.jsonl", io.BytesIO("\n".join(lines).encode())),
                                       purpose="batch")
        # The batch's quality target, through OpenAI's metadata: between the fleet priors (SmolLM2
        # 0.35, Gemma 0.40). The first tick may hold the SmolLM2-pinned job back to lift the
        # batch's mean (whether it does depends on the jobs' age at the tick); it must then run
        # in a later tick on its batch-mates' surplus. Before the tick counted a batch's
        # dispatched jobs in its quality row, such a job waited alone until max_pending_s.
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                      completion_window="24h", metadata={"switchyard_alpha": "0.38"})
        assert batch.status == "in_progress"
        deadline = time.monotonic() + 300
        while batch.status not in FINAL:
            stack.check_alive()
            assert time.monotonic() < deadline, (batch, waiting_reasons(stack, batch.id))
            time.sleep(0.5)
            batch = client.batches.retrieve(batch.id)
        output = [json.loads(text) for text in client.files.content(batch.output_file_id or "").text.splitlines()]

        completion = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": FRANCE}], max_tokens=32)
        answer = completion.parse()

        bad = client.files.create(file=("bad.jsonl", io.BytesIO(b'{"custom_id": "x", "method": "GET"}\nnot json\n')),
                                  purpose="batch")
        failed = client.batches.create(input_file_id=bad.id, endpoint="/v1/chat/completions", completion_window="24h")

    assert batch.status == "completed" and batch.error_file_id is None, batch
    assert batch.request_counts is not None and (batch.request_counts.completed, batch.request_counts.total) == (4, 4)
    by_id = {line["custom_id"]: line for line in output}
    assert set(by_id) == {"france-auto", "france-smollm2", "france-gemma", "sum"}
    for custom_id, line in by_id.items():
        response = line["response"]
        assert line["error"] is None and response["status_code"] == 200 and response["request_id"]
        body = response["body"]
        assert body["object"] == "chat.completion" and body["model"] in {"smollm2-135m", "gemma-3-270m"}
        assert body["choices"][0]["message"]["content"].strip(), line
        assert body["usage"]["prompt_tokens"] > 0 and body["usage"]["completion_tokens"] > 0
    assert by_id["france-smollm2"]["response"]["body"]["model"] == "smollm2-135m"
    assert by_id["france-gemma"]["response"]["body"]["model"] == "gemma-3-270m"
    for custom_id in ("france-auto", "france-smollm2", "france-gemma"):
        assert "paris" in by_id[custom_id]["response"]["body"]["choices"][0]["message"]["content"].lower()

    assert "Paris" in (answer.choices[0].message.content or "")
    assert answer.model in {"smollm2-135m", "gemma-3-270m"} and answer.usage and answer.usage.completion_tokens > 0
    assert completion.headers["x-switchyard-job-id"] and completion.headers["x-switchyard-reason"]

    assert failed.status == "failed" and failed.errors is not None
    assert [(e.line, e.code) for e in failed.errors.data or []] == [(1, "invalid_method"), (2, "invalid_json_line")]
