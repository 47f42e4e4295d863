"""OpenAI request bodies as Switchyard jobs, and finished jobs as OpenAI's answers (pure code)."""
from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from scheduler.errors import InvalidRequest
from scheduler.fleet import Fleet
from scheduler.jobspec import JobSpec
from scheduler.openai_compat.answers import failure_of, output_line
from scheduler.openai_compat.batch_input import batch_options
from scheduler.openai_compat.bodies import (
    ChatCompletionRequest, CompletionRequest, ModelNotFound, OpenAIRequestError, job_spec_from_request,
)
from scheduler.settings import Settings
from scheduler.storage.tables import Job
from scheduler.storage.types import JobStatus

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
DUE = NOW + dt.timedelta(minutes=1)


def chat_spec(fleet: Fleet, **body: Any) -> JobSpec:
    request = ChatCompletionRequest.model_validate({"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
                                                   | body)
    return job_spec_from_request(request, fleet=fleet, settings=Settings(), now=NOW, deadline=DUE)


def test_a_chat_body_maps_to_a_job(fleet: Fleet) -> None:
    spec = chat_spec(fleet, messages=[{"role": "developer", "content": "Be brief."},
                                      {"role": "user", "content": [{"type": "text", "text": "a"},
                                                                   {"type": "text", "text": "b"}]}],
                     max_completion_tokens=9, stop="END", seed=3, user="u", n=1, top_p=1.0, logprobs=False,
                     response_format={"type": "text"}, switchyard={"min_quality": 0.4, "max_cost_usd": 0.01})
    assert [m.model_dump() for m in spec.messages or []] == [{"role": "system", "content": "Be brief."},
                                                             {"role": "user", "content": "a\nb"}]
    assert (spec.max_tokens, spec.stop, spec.temperature, spec.allowed_models) == (9, ["END"], 0.0, None)
    assert (spec.min_quality, spec.max_cost_usd, spec.deadline, spec.on_deadline_miss) == (0.4, 0.01, DUE, "run_late")
    assert chat_spec(fleet, model="gemma-3-270m").allowed_models == ["gemma-3-270m"]
    assert chat_spec(fleet, switchyard={"allowed_models": ["smollm2-135m"]}).allowed_models == ["smollm2-135m"]


@pytest.mark.parametrize(("body", "code", "param"), [
    ({"n": 2}, "unsupported_parameter", "n"),
    ({"n": True}, "unsupported_parameter", "n"),          # True == 1 in Python, but not in this API
    ({"top_p": 0.9}, "unsupported_parameter", "top_p"),
    ({"tools": [{"type": "function"}]}, "unsupported_parameter", "tools"),
    ({"stream": True}, "unsupported_parameter", "stream"),
    ({"colour": "red"}, "unknown_parameter", "colour"),
    ({"max_tokens": 5, "max_completion_tokens": 6}, "invalid_request", "max_completion_tokens"),
    ({"model": "gemma-3-270m", "switchyard": {"allowed_models": ["smollm2-135m"]}}, "invalid_request",
     "switchyard.allowed_models"),
    ({"switchyard": {"allowed_models": ["gpt-9"]}}, "model_not_found", "switchyard.allowed_models"),
    ({"messages": [{"role": "user", "content": ""}]}, "invalid_request", "messages.0.content"),
])
def test_what_cannot_run_as_sent_is_refused_naming_the_field(fleet: Fleet, body: dict[str, Any], code: str,
                                                             param: str) -> None:
    with pytest.raises(OpenAIRequestError) as refused:
        chat_spec(fleet, **body)
    assert (refused.value.code, refused.value.param) == (code, param)


def test_an_unknown_model_is_not_found_and_limits_still_apply(fleet: Fleet) -> None:
    with pytest.raises(ModelNotFound, match="auto"):
        chat_spec(fleet, model="gpt-9")
    with pytest.raises(InvalidRequest, match="max_tokens"):
        chat_spec(fleet, max_tokens=10**6)


def test_a_completion_takes_one_prompt(fleet: Fleet) -> None:
    def spec(prompt: Any) -> JobSpec:
        return job_spec_from_request(CompletionRequest(model="auto", prompt=prompt), fleet=fleet,
                                     settings=Settings(), now=NOW, deadline=DUE)

    assert spec("2+2=").prompt == spec(["2+2="]).prompt == "2+2="
    with pytest.raises(OpenAIRequestError, match="one prompt per request"):
        spec(["a", "b"])


def test_batch_metadata_extension() -> None:
    options = batch_options({"switchyard_alpha": "0.4", "switchyard_max_cost_usd": "2", "team": "x"})
    assert (options.alpha, options.max_cost_usd) == (0.4, 2.0)
    for bad in ({"switchyard_alpha": "nan"}, {"switchyard_alpha": "-0.1"}, {"switchyard_max_cost_usd": "0"},
                {"switchyard_quality": "0.5"}):
        with pytest.raises(InvalidRequest):
            batch_options(bad)


def job(status: JobStatus, **fields: Any) -> Job:
    return Job(id="j1", status=status, messages=[{"role": "user", "content": "q"}], prompt=None, attempts=1,
               created_at=NOW, finished_at=NOW, custom_id="c1", **fields)


@pytest.mark.parametrize(("row", "status_code", "code"), [
    (job(JobStatus.FAILED, error="PromptTooLong: 3000 tokens > n_ctx 2048"), 422, "context_length_exceeded"),
    (job(JobStatus.FAILED, error="PermanentJobError: max_tokens must be at least 1"), 422, "invalid_request"),
    (job(JobStatus.FAILED, error="no model can ever serve this job: ..."), 502, "model_error"),
    (Job(id="j2", status=JobStatus.FAILED, attempts=0, error="no model can ever serve this job: cap",
         created_at=NOW), 422, "no_model_can_serve"),
    (job(JobStatus.FAILED, error="lease expired after 3 attempts (worker lost or model hung)"), 502, "model_error"),
    (job(JobStatus.CANCELLED), 409, "batch_cancelled"),
    (job(JobStatus.EXPIRED), 503, "batch_expired"),
])
def test_failures_answer_the_status_that_fits(row: Job, status_code: int, code: str) -> None:
    failure = failure_of(row)
    assert (failure.status_code, failure.code) == (status_code, code)


def test_output_lines_follow_openai() -> None:
    answered, line = output_line(job(JobStatus.SUCCEEDED, result_text="Paris", finish_reason="length",
                                     assigned_model="gemma-3-270m", input_tokens=5, output_tokens=1))
    body = line["response"]["body"]
    assert answered and line["id"] == "batch_req_j1" and line["custom_id"] == "c1" and line["error"] is None
    assert (body["object"], body["model"], body["choices"][0]["finish_reason"], body["usage"]["total_tokens"]) == (
        "chat.completion", "gemma-3-270m", "length", 6)
    answered, line = output_line(job(JobStatus.EXPIRED, error="window over"))
    assert not answered and line["response"] is None and line["error"] == {"code": "batch_expired",
                                                                            "message": "window over"}


def test_an_error_about_the_whole_body_names_no_field(fleet: Fleet) -> None:
    with pytest.raises(OpenAIRequestError) as refused:
        chat_spec(fleet, messages=[{"role": "system", "content": "Be brief."}])
    assert refused.value.param is None and str(refused.value) == "'messages' needs at least one user message"
