"""The fleet file: the default parses; bad files fail with errors naming the problem."""
from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.errors import FleetFileError, UnknownModel
from scheduler.fleet import BackendKind, PromptFormat, load_fleet
from scheduler.settings import Settings


def test_default_fleet_has_the_two_cpu_models() -> None:
    fleet = load_fleet(Settings().fleet_file)
    assert fleet.names == ["smollm2-135m", "gemma-3-270m"]
    smol, gemma = fleet.models
    assert smol.backend is gemma.backend is BackendKind.LLAMA_CPP
    assert (smol.prompt_format, gemma.prompt_format) == (PromptFormat.CHAT, PromptFormat.COMPLETION)
    with pytest.raises(UnknownModel, match="smollm2-135m, gemma-3-270m"):
        fleet.get("gpt-4")


def test_cost_uses_token_prices_when_given_else_seconds(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text('''
[[models]]
name = "api"
backend = "openai"
weights = "gpt-x"
usd_per_mtok_input = 1.0
usd_per_mtok_output = 3.0

[[models]]
name = "cpu"
backend = "llama_cpp"
weights = "path:/m.gguf"
usd_per_second = 0.5
''')
    api, cpu = load_fleet(path).models
    assert api.cost_usd(1000, 2000, seconds=99) == pytest.approx((1000 * 1 + 2000 * 3) / 1e6)
    assert cpu.cost_usd(1000, 2000, seconds=2) == pytest.approx(1.0)


@pytest.mark.parametrize(("text", "words"), [
    ("[[models]\nname=", "not valid TOML"),
    ("models = []", "no models"),
    ('[[models]]\nname = "x"\nbackend = "llama_cpp"\nweights = "path:/a"', "usd_per_mtok_"),
    ('[[models]]\nname = "Bad Name"\nbackend = "llama_cpp"\nweights = "p"\nusd_per_second = 1', "name"),
    ('[[models]]\nname = "x"\nbackend = "tpu"\nweights = "p"\nusd_per_second = 1', "backend"),
    ('[[models]]\nname = "x"\nbackend = "vllm"\nweights = "p"\nusd_per_second = 1\n'
     '[[models]]\nname = "x"\nbackend = "vllm"\nweights = "p"\nusd_per_second = 1', "duplicate"),
])
def test_bad_fleet_files_name_the_problem(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    with pytest.raises(FleetFileError, match=words):
        load_fleet(path)


def test_missing_fleet_file(tmp_path: Path) -> None:
    with pytest.raises(FleetFileError, match="not found"):
        load_fleet(tmp_path / "nope.toml")
