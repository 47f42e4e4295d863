"""The interchange format (reader, writer, validation) and the converters on derived samples."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from scheduler.cli.replay_cmd import register
from scheduler.datasets import (
    DatasetFormatError,
    ModelPrice,
    Outcome,
    OutcomeMatrix,
    OutcomeRecord,
    Split,
    convert,
    read_dataset,
    realised_cost_usd,
    write_dataset,
)
from scheduler.datasets.splitting import hashed_split

DATA = Path(__file__).resolve().parents[1] / "data"


def _rec(i: int, split: str = "train", **outcomes: Outcome) -> OutcomeRecord:
    return OutcomeRecord(f"q{i}", f"prompt {i}", "t", Split(split), outcomes or {"a": Outcome(1.0, 0.01, 5)})


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    recs = [_rec(0), _rec(1, "test", a=Outcome(0.5, None, None), b=Outcome(0.0, 0.2, 7))]
    prices = {"a": ModelPrice(1.0, 2.0), "b": ModelPrice(None, None)}
    write_dataset(tmp_path / "x.jsonl", recs, prices)
    back = read_dataset(tmp_path / "x.jsonl")
    assert back.name == "x" and back.records == tuple(recs) and back.prices == prices
    assert back.models == ["a", "b"]
    assert json.loads((tmp_path / "x.models.json").read_text())["a"] == {
        "input_usd_per_mtok": 1.0, "output_usd_per_mtok": 2.0}


def test_responses_round_trip_and_are_left_out_when_not_logged(tmp_path: Path) -> None:
    recs = [_rec(0, a=Outcome(1.0, 0.01, 5, response="B\n")),
            _rec(1, "test", a=Outcome(0.0, 0.02, 3, response=""), b=Outcome(1.0, 0.2, 7))]
    write_dataset(tmp_path / "r.jsonl", recs, {})
    lines = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert lines[0]["outcomes"]["a"]["response"] == "B\n"
    assert lines[1]["outcomes"]["a"]["response"] == ""      # an empty answer is an answer
    assert "response" not in lines[1]["outcomes"]["b"]      # not logged: the key is left out
    back = read_dataset(tmp_path / "r.jsonl")
    assert back.records == tuple(recs)
    m = OutcomeMatrix.from_records(back.records, ["a", "b"])
    assert m.responses is not None and m.responses.tolist() == [["B\n", None], ["", None]]
    assert m.subset(np.array([1])).responses.tolist() == [["", None]]


def test_old_files_without_responses_still_read(tmp_path: Path) -> None:
    path = tmp_path / "old.jsonl"
    rows = [{"id": f"q{i}", "prompt": "p", "task": "t", "split": split,
             "outcomes": {"m": {"score": 1, "cost_usd": 0.1, "output_tokens": None}}}
            for i, split in enumerate(("train", "test"))]
    rows[1]["outcomes"]["m"]["response"] = None              # null is allowed too
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = read_dataset(path)
    assert all(o.response is None for r in data.records for o in r.outcomes.values())
    assert OutcomeMatrix.from_records(data.records, ["m"]).responses is None


@pytest.mark.parametrize("bad", ['3', '["B"]', '{"text": "B"}', "true"])
def test_reader_refuses_a_response_that_is_not_text(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"id": "z", "prompt": "p", "task": "t", "split": "train",
                       "outcomes": {"m": {"score": 1, "cost_usd": 0.1}}})
    line = ('{"id": "q7", "prompt": "p", "task": "t", "split": "test", "outcomes": {"gpt": '
            '{"score": 1, "cost_usd": 0.1, "response": ' + bad + '}}}')
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(DatasetFormatError, match="response: expected the answer text") as err:
        read_dataset(path)
    assert "bad.jsonl:2" in str(err.value) and "'q7'" in str(err.value) and "'gpt'" in str(err.value)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "a"}', "missing keys"),
        ('{"id": "a", "prompt": "p", "task": "t", "split": "dev", "outcomes": {"m": {"score": 1}}}',
         "expected 'train' or 'test'"),
        ('{"id": "a", "prompt": "p", "task": "t", "split": "test", "outcomes": {"m": {"score": 1.5}}}',
         r"outside \[0.0, 1.0\]"),
        ('{"id": "a", "prompt": "p", "task": "t", "split": "test", "outcomes": {"m": {"score": 1, "x": 2}}}',
         "unknown outcome keys"),
        ('{"id": "a", "prompt": "p", "task": "t", "split": "test", '
         + '"outcomes": {"m": {"score": 1, "output_tokens": 2.5}}}', "output_tokens"),
        ("{not json", "not valid JSON"),
    ],
)
def test_reader_names_the_line_and_the_problem(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"id": "z", "prompt": "p", "task": "t", "split": "train",
                       "outcomes": {"m": {"score": 1, "cost_usd": 0.1}}})
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(DatasetFormatError, match=message) as err:
        read_dataset(path)
    assert "bad.jsonl:2" in str(err.value)


def test_cross_record_rules(tmp_path: Path) -> None:
    with pytest.raises(DatasetFormatError, match="duplicate id"):
        write_dataset(tmp_path / "d.jsonl", [_rec(0), _rec(0, "test")], {})
    with pytest.raises(DatasetFormatError, match="no 'test' records"):
        write_dataset(tmp_path / "d.jsonl", [_rec(0)], {})
    unpriced = _rec(1, "test", b=Outcome(1.0, None, None))
    with pytest.raises(DatasetFormatError, match=r"\['b'\].*prices"):
        write_dataset(tmp_path / "d.jsonl", [_rec(0), unpriced], {})


def test_cost_rule_prefers_logged_cost_then_prices_and_tokens() -> None:
    recs = [
        _rec(0, a=Outcome(1.0, 0.5, 10)),                 # logged cost wins
        _rec(1, a=Outcome(1.0, None, 1_000)),            # prices x (prompt + logged output tokens)
        _rec(2, a=Outcome(0.0, None, None)),             # prices x (prompt + assumed output tokens)
    ]
    m = OutcomeMatrix.from_records(recs, ["a"])
    cost = realised_cost_usd(m, {"a": ModelPrice(1.0, 10.0)}, assumed_output_tokens=100)
    prompt_tokens = m.prompt_tokens
    assert cost[0, 0] == 0.5
    assert cost[1, 0] == pytest.approx((prompt_tokens[1] * 1.0 + 1_000 * 10.0) / 1e6)
    assert cost[2, 0] == pytest.approx((prompt_tokens[2] * 1.0 + 100 * 10.0) / 1e6)


def test_routerbench_converter(tmp_path: Path) -> None:
    data = convert("routerbench", DATA / "routerbench_zs", tmp_path / "rb.jsonl")
    assert len(data.models) == 11 and data.prices["gpt-4-1106-preview"] == ModelPrice(10.0, 30.0)
    assert {r.task for r in data.records} == {"arc-challenge", "mbpp", "winogrande"}
    pair = [r for r in data.records if r.id.startswith("arc-challenge.val.137#")]
    assert len(pair) == 2 and {r.split for r in pair} == {Split.TRAIN, Split.TEST}
    assert len(pair[0].outcomes) + len(pair[1].outcomes) == 11   # NaN cells left out, not zeroed
    rec = next(r for r in data.records if r.task == "winogrande")
    assert not rec.prompt.startswith("['")                       # list literal unwrapped
    # every observed outcome carries the logged answer, unwrapped from its list literal
    assert all(o.response is not None for r in data.records for o in r.outcomes.values())
    assert rec.outcomes["gpt-4-1106-preview"].response in ("A", "B")
    mbpp = next(r for r in data.records if r.task == "mbpp")
    assert "def " in (mbpp.outcomes["gpt-4-1106-preview"].response or "")
    out = rec.outcomes["gpt-4-1106-preview"]
    assert out.cost_usd is not None and out.output_tokens is not None
    # the price table reproduces the logged cost: input tokens implied by two models agree
    g4, g35 = rec.outcomes["gpt-4-1106-preview"], rec.outcomes["gpt-3.5-turbo-1106"]
    tin_4 = (g4.cost_usd * 1e6 - 30.0 * g4.output_tokens) / 10.0
    tin_35 = (g35.cost_usd * 1e6 - 2.0 * g35.output_tokens) / 1.0
    assert tin_4 == pytest.approx(tin_35, rel=0.1)


def test_llmrouter_converter(tmp_path: Path) -> None:
    data = convert("llmrouter", DATA / "llmrouter", tmp_path / "lr.jsonl")
    assert len(data.split("train")) == 12 and len(data.split("test")) == 6
    assert len(data.models) == 9
    assert all(r.task != "unknown" for r in data.records)
    assert data.prices["gemma-2-9b-it"] == ModelPrice(0.1, 0.1)
    assert all(o.cost_usd is None and o.output_tokens is None and o.response is None
               for r in data.records for o in r.outcomes.values())


def test_routellm_converters_split_deterministically(tmp_path: Path) -> None:
    mmlu = convert("routellm-mmlu", DATA / "routellm", tmp_path / "mmlu.jsonl")
    assert len(mmlu.records) == 20 and {r.task for r in mmlu.records} == {"mmlu_anatomy", "mmlu_astronomy"}
    assert all(r.split is hashed_split(r.id) for r in mmlu.records)
    assert all(o.response is None for r in mmlu.records for o in r.outcomes.values())   # MMLU logs none
    again = convert("routellm-mmlu", DATA / "routellm", tmp_path / "mmlu2.jsonl")
    assert [r.split for r in again.records] == [r.split for r in mmlu.records]
    gsm = convert("routellm-gsm8k", DATA / "routellm", tmp_path / "gsm.jsonl")
    assert len(gsm.records) == 12
    assert all(o.output_tokens and o.output_tokens > 10 for r in gsm.records for o in r.outcomes.values())
    first = gsm.records[0].outcomes["mistralai/Mixtral-8x7B-Instruct-v0.1"].response
    assert first is not None and "#### 18" in first               # the logged answer, as logged
    assert gsm.prices["gpt-4-1106-preview"] == ModelPrice(24.7, 24.7)


def test_hashed_split_fraction() -> None:
    splits = [hashed_split(f"id-{i}") for i in range(4000)]
    assert abs(np.mean([s is Split.TEST for s in splits]) - 0.3) < 0.03


def test_convert_command(tmp_path: Path) -> None:
    app = typer.Typer()
    register(app)
    out = tmp_path / "lr.jsonl"
    result = CliRunner().invoke(app, ["datasets", "convert", "llmrouter", str(DATA / "llmrouter"), str(out)])
    assert result.exit_code == 0, result.output
    assert "18 records (12 train, 6 test), 9 models" in result.output
    assert read_dataset(out).prices
    result = CliRunner().invoke(app, ["datasets", "convert", "nope", str(DATA), str(out)])
    assert result.exit_code == 2 and "unknown converter" in result.output
