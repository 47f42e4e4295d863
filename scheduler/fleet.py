"""The fleet file: which models exist, how they run, what they cost and how much they can take.

A TOML file with one ``[[models]]`` table per model (see ``fleet.default.toml``). It is read by
the tick (prices, capacity, priors) and by workers (backend and weights). Costs are either token
prices (hosted APIs) or a price per second of the hardware the model occupies (self-hosted: an
amortised CPU/GPU hour price, or watts x $/kWh as PerLLM does).
"""
from __future__ import annotations

import enum
import tomllib
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from scheduler.costs import Amount, job_cost_usd
from scheduler.errors import FleetFileError, UnknownModel

ModelName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]


class BackendKind(str, enum.Enum):
    LLAMA_CPP = "llama_cpp"
    VLLM = "vllm"
    OPENAI = "openai"
    ECHO = "echo"              # a test double of a model for load and smoke tests (docs/backends.md)


class PromptFormat(str, enum.Enum):
    CHAT = "chat"              # the model's own chat template (instruction-tuned models)
    COMPLETION = "completion"  # a plain question/answer completion prompt (base models)


class ModelSpec(BaseModel):
    """One model of the fleet."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: ModelName
    backend: BackendKind
    weights: str = Field(
        description="Where the weights come from: 'package:PKG/FILE.gguf' (a file inside an installed "
        "package), 'assemble:PKG' (a chunked package with assemble()), 'path:/abs/file.gguf', or for "
        "vLLM/openai the model id the engine/endpoint knows."
    )
    prompt_format: PromptFormat = PromptFormat.CHAT
    system_prompt: str | None = Field(default=None, description="System message for chat models.")
    endpoint_url: str | None = Field(default=None, description="Base URL of an OpenAI-compatible endpoint.")
    usd_per_mtok_input: float | None = Field(default=None, ge=0)
    usd_per_mtok_output: float | None = Field(default=None, ge=0)
    usd_per_second: float | None = Field(
        default=None, ge=0, description="Cost of one second of the hardware the model occupies."
    )
    capacity_jobs: int = Field(default=64, ge=0, description="Most jobs one tick may give this model.")
    max_batch_jobs: int = Field(default=4, ge=1, le=4096, description="Jobs per Celery task (micro-batch).")
    concurrency: int = Field(
        default=1, ge=1, le=1024,
        description="Jobs one worker process runs at once: 1 for llama.cpp; requests in flight for openai; "
        "sequences per batch for vllm.")
    n_ctx: int = Field(default=2048, ge=128, description="Context window the backend allocates.")
    job_timeout_s: float = Field(
        default=300.0, gt=0, le=86_400, description="A job generating longer than this is stopped and retried."
    )
    options: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Backend-specific settings ([models.options]); see docs/backends.md.")
    quality_prior: float = Field(
        default=0.5, ge=0, le=1, description="Prior chance of a good answer before any outcome is seen."
    )
    quality_prior_labels: float = Field(
        default=10.0, ge=0, description="How many outcomes the quality prior weighs as: a fitted p is blended with "
        "the prior by n / (n + this) for a model with n labels, so a model seen a few times is not judged on them "
        "alone (0 = trust the fit at once).")
    tokens_per_second_prior: float = Field(
        default=20.0, gt=0, description="Generation speed assumed before any job has finished."
    )

    @model_validator(mode="after")
    def _has_a_price(self) -> ModelSpec:
        token_priced = self.usd_per_mtok_input is not None or self.usd_per_mtok_output is not None
        if not token_priced and self.usd_per_second is None:
            raise ValueError(f"model {self.name!r} needs usd_per_mtok_* or usd_per_second")
        return self

    def cost_usd(self, input_tokens: Amount, output_tokens: Amount, seconds: Amount) -> Amount:
        """Cost of one job (or arrays of jobs) on this model (scheduler/costs.py)."""
        return job_cost_usd(input_tokens, output_tokens, seconds, usd_per_mtok_input=self.usd_per_mtok_input,
                            usd_per_mtok_output=self.usd_per_mtok_output, usd_per_second=self.usd_per_second)


class Fleet(BaseModel):
    """All models, by name."""

    model_config = ConfigDict(frozen=True)

    models: tuple[ModelSpec, ...]

    @model_validator(mode="after")
    def _unique_names(self) -> Fleet:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate model names in fleet: {names}")
        if not names:
            raise ValueError("the fleet has no models")
        return self

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models]

    def get(self, name: str) -> ModelSpec:
        for spec in self.models:
            if spec.name == name:
                return spec
        raise UnknownModel(f"unknown model {name!r}; the fleet has: {', '.join(self.names)}")


def load_fleet(path: Path) -> Fleet:
    """Read and validate a fleet file, with an error that names the file and the bad field."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise FleetFileError(f"fleet file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise FleetFileError(f"fleet file {path} is not valid TOML: {exc}") from exc
    try:
        return Fleet.model_validate(raw)
    except ValidationError as exc:
        raise FleetFileError(f"fleet file {path} is invalid: {exc}") from exc
