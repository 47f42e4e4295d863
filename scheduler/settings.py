"""The one validated settings object. Nothing else in Switchyard reads ``os.environ``.

Every field can be set with an environment variable ``SWITCHYARD_<FIELD>`` (upper case).
The defaults are the embedded setup: SQLite for jobs and kombu's SQLAlchemy transport over
SQLite for Celery messages, so a laptop needs no servers.
"""
from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_HOME = Path(".switchyard")
DEFAULT_FLEET_FILE = Path(__file__).resolve().parent / "fleet.default.toml"
# `switchyard up` and `switchyard demo` write their local tenant's key here (mode 0600).
LOCAL_API_KEY_FILE = DEFAULT_HOME / "api-key"


class Settings(BaseSettings):
    """Switchyard configuration (env prefix ``SWITCHYARD_``)."""

    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_", extra="ignore", frozen=True)

    database_url: str = Field(
        default=f"sqlite:///{DEFAULT_HOME / 'switchyard.db'}",
        description="SQLAlchemy URL of the job store: postgresql+psycopg://... in production.",
    )
    broker_url: str = Field(
        default=f"sqla+sqlite:///{DEFAULT_HOME / 'broker.db'}",
        description="Celery broker URL: redis://host:6379/0 in production.",
    )
    fleet_file: Path = Field(
        default=DEFAULT_FLEET_FILE, description="TOML file naming each model, its backend, price and capacity."
    )
    api_url: str = Field(default="http://127.0.0.1:8000", description="Where CLI client commands reach the API.")
    api_key: SecretStr | None = Field(
        default=None, description="The key CLI client commands send (Authorization: Bearer); when unset, the key "
        f"`switchyard up` wrote to {LOCAL_API_KEY_FILE}.")
    api_key_cache_s: float = Field(
        default=5.0, ge=0, le=300,
        description="How long an API process remembers who holds a key: requests skip the lookup, and a revoked "
        "key or a changed rate limit takes effect within this many seconds (0: look up every request).")
    max_file_bytes: int = Field(
        default=100 * 1024 * 1024, ge=1024, description="Largest file the Files API accepts (413 beyond).")
    max_batch_file_requests: int = Field(
        default=50_000, ge=1, description="Most request lines one batch input file may hold.")
    interactive_deadline_s: float = Field(
        default=60.0, gt=0, le=86_400,
        description="A /v1/chat/completions or /v1/completions request becomes a job with this deadline "
        "(so the next tick places it first); it still runs if the deadline is missed.")
    interactive_timeout_s: float = Field(
        default=600.0, gt=0, le=3600,
        description="How long such a request waits for its answer before answering 504 with the job id to poll.")
    tick_interval_s: float = Field(default=2.0, gt=0, le=3600, description="Seconds between scheduling ticks.")
    window_max_jobs: int = Field(
        default=10_000, ge=1, le=1_000_000, description="Most pending jobs one tick claims and plans."
    )
    window_headroom: float = Field(
        default=4.0, ge=1.0, le=1000.0,
        description="A tick plans about this many times the fleet's free capacity (within window_min_jobs.."
        "window_max_jobs): enough choice for a cheap plan, never work proportional to the whole backlog.",
    )
    window_min_jobs: int = Field(
        default=64, ge=1, le=1_000_000,
        description="Smallest window a tick plans, even when the fleet is full (so waiting jobs get a reason).",
    )
    max_pending_s: float = Field(
        default=86_400.0, gt=0, le=366 * 86_400,
        description="A job still pending this long after submission ends 'expired' with its last reason "
        "(a job or batch may set its own max_pending_s).",
    )
    decision_retention_s: float = Field(
        default=7 * 86_400.0, gt=0,
        description="Decision history (the decisions and ticks tables) older than this is pruned by the scheduler.",
    )
    broker_audit_interval_s: float = Field(
        default=15.0, gt=0, le=3600,
        description="How often the scheduler checks that queued jobs' messages are still on the broker; a "
        "message missing at two checks in a row (lost in a broker restart) is re-planned at once.",
    )
    outage_retry_max_s: float = Field(
        default=4.0, gt=0, le=300,
        description="Longest wait between the scheduler's retries while the database or broker is down "
        "(it backs off from tick_interval_s up to this, and never exits on an outage).",
    )
    plan_horizon_s: float = Field(
        default=30.0, gt=0, le=86_400,
        description="Seconds of work the tick queues ahead per live worker slot (sizes each model's capacity).",
    )
    queue_lease_s: float = Field(
        default=900.0, gt=0, description="A queued job not started within this many seconds is re-published."
    )
    run_lease_s: float = Field(
        default=30.0, gt=0,
        description="A running job whose worker stops renewing its lease (dead, or past the job's timeout) "
        "for this many seconds is retried. Must exceed heartbeat_interval_s.",
    )
    max_attempts: int = Field(default=3, ge=1, le=100, description="Runs a job may start before it is failed.")
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, description="Largest request body the API accepts (413 beyond)."
    )
    max_jobs_per_request: int = Field(default=10_000, ge=1, description="Most jobs one submit call may carry.")
    max_prompt_chars: int = Field(default=200_000, ge=1, description="Longest prompt accepted, in characters.")
    max_tokens_limit: int = Field(default=8192, ge=1, description="Largest max_tokens a job may ask for.")
    llama_threads: int = Field(
        default=1, ge=1, le=256, description="llama.cpp threads per worker process (1 on small machines)."
    )
    model_cache_dir: Path = Field(
        default=DEFAULT_HOME / "models", description="Where weights assembled from chunk packages are written."
    )
    heartbeat_interval_s: float = Field(default=5.0, gt=0, description="Seconds between worker heartbeats.")
    embedding_model_dir: Path | None = Field(
        default=None, description="Folder with model.onnx + tokenizer.json for the MiniLM featuriser "
        "(default: the `embeddings` extra's packages).")
    embedding_threads: int = Field(default=0, ge=0, le=256, description="onnxruntime threads (0 = its default).")
    embedding_cache_dir: Path | None = Field(
        default=None, description="Cache prompt embeddings here (replays re-read them instead of re-encoding).")
    endpoint_api_keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='API keys of OpenAI-compatible endpoints by model name, as JSON: {"gpt-4o-mini": "sk-..."}.')
    predictor_dir: Path = Field(
        default=DEFAULT_HOME / "predictors", description="Where fitted predictor versions are kept (newest is used)."
    )
    predictor_kind: str = Field(default="switchyard", description="Predictor fitted on outcomes (see `replay`).")
    refit_min_new_labels: int = Field(
        default=200, ge=1, description="Refit the predictor once this many new outcome labels have arrived."
    )
    refit_min_interval_s: float = Field(default=600.0, ge=0, description="At most one refit per this many seconds.")
    exploration_target_labels: int = Field(
        default=30, ge=0, description="A model with fewer outcome labels than this (feedback, or what the loaded predictor was fitted "
                                   "on, imported datasets included) gets exploring jobs (0 = never explore)."
    )
    exploration_budget_fraction: float = Field(
        default=0.1, ge=0, le=1, description="Most of each window's jobs that may be sent to explore a little-tried model."
    )
    promise_check_labels: int = Field(
        default=0, ge=0, description="Hold alpha to realised outcomes: add the promised-vs-realised gap of this many "
                                     "recent labels to alpha (0 = off: alpha bounds the mean predicted success)."
    )
    scheduler_metrics_port: int = Field(
        default=0, ge=0, le=65_535,
        description="Port of the scheduler's Prometheus /metrics (0 = not served).")
    worker_metrics_port: int = Field(
        default=0, ge=0, le=65_535,
        description="First port of the workers' Prometheus /metrics: each worker pool process serves its own, at "
        "this port plus its pool index (0..concurrency-1); `switchyard worker --metrics-port` overrides it "
        "(0 = not served).")
    metrics_host: str = Field(
        default="127.0.0.1",
        description="Interface the scheduler's and workers' /metrics servers bind (0.0.0.0 in containers). The "
        "API serves /metrics on its own port.")
    metrics_max_spend_series: int = Field(
        default=50, ge=0, le=10_000,
        description="Most tenants with a max_spend_usd, and most open batches with a max_cost_usd (newest "
        "first), whose spend the scheduler exports (bounds the series and the query behind them).")
    metrics_quality_window_s: float = Field(
        default=3600.0, gt=0, le=30 * 86_400,
        description="The scheduler's promised-vs-realised quality gauges cover the jobs graded this recently.")

    @model_validator(mode="after")
    def _lease_outlives_heartbeat(self) -> Settings:
        if self.run_lease_s <= self.heartbeat_interval_s:
            raise ValueError("run_lease_s must be longer than heartbeat_interval_s, which renews it")
        return self

    @property
    def heartbeat_ttl_s(self) -> float:
        """A worker whose last heartbeat is older than this is gone: three missed beats."""
        return 3 * self.heartbeat_interval_s

    def as_environment(self) -> dict[str, str]:
        """Every setting as the SWITCHYARD_* variables that reproduce it in a child process."""
        env = {}
        for name, value in self.model_dump().items():
            if value is None:  # an unset optional stays unset (str() would make it the text "None")
                continue
            env[f"SWITCHYARD_{name.upper()}"] = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        env["SWITCHYARD_ENDPOINT_API_KEYS"] = json.dumps(
            {model: key.get_secret_value() for model, key in self.endpoint_api_keys.items()})
        return env

    def client_api_key(self) -> str | None:
        """The key client commands send: ``api_key``, else the one `switchyard up` wrote (None: neither)."""
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        try:
            return LOCAL_API_KEY_FILE.read_text().strip() or None
        except OSError:
            return None

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
