"""Backend-specific options from a fleet entry's ``[models.options]`` table.

Each backend declares its options as a pydantic model (bounds and a description on each field) and
reads them here, so a typo in the fleet file fails the worker's start with the model's name and
the bad key instead of being ignored.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from scheduler.errors import FleetFileError
from scheduler.fleet import ModelSpec

OptionsT = TypeVar("OptionsT", bound=BaseModel)


def spec_options(spec: ModelSpec) -> Mapping[str, Any]:
    """The raw ``options`` table of ``spec`` (empty when the entry has none)."""
    return spec.options


def parse_options(spec: ModelSpec, model: type[OptionsT]) -> OptionsT:
    """Validate ``spec``'s options against a backend's options model."""
    try:
        return model.model_validate(dict(spec_options(spec)))
    except ValidationError as exc:
        raise FleetFileError(
            f"model {spec.name!r}: invalid options for the {spec.backend.value!r} backend: {exc}"
        ) from exc
