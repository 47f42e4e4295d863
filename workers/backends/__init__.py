"""Model backends and the registry that picks one for a fleet entry.

Each backend module imports its engine (llama_cpp, vllm, httpx) at its top, and this registry
imports a backend module only when ``make_backend`` needs it: importing ``workers.backends``
never loads an engine, and a worker only needs the engine of the model it hosts.
"""
from __future__ import annotations

import importlib

from scheduler.errors import BackendUnavailable
from scheduler.fleet import BackendKind, ModelSpec
from scheduler.settings import Settings
from workers.backends.base import Backend, GenerationRequest, GenerationResult

__all__ = [
    "Backend", "BackendUnavailable", "GenerationRequest", "GenerationResult", "make_backend",
]

# kind -> (module, class, the extra that installs its engine). None: not in this build yet.
_REGISTRY: dict[BackendKind, tuple[str, str, str] | None] = {
    BackendKind.LLAMA_CPP: ("workers.backends.llama_cpp", "LlamaCppBackend", "llama"),
    BackendKind.VLLM: ("workers.backends.vllm", "VllmBackend", "gpu"),
    # httpx is a core dependency: this one is always installed.
    BackendKind.OPENAI: ("workers.backends.openai_http", "OpenAIHttpBackend", ""),
    # Not a model: answers with the prompt, for load and smoke tests. Needs no engine.
    BackendKind.ECHO: ("workers.backends.echo", "EchoBackend", ""),
}


def make_backend(spec: ModelSpec, settings: Settings) -> Backend:
    """Load ``spec``'s model with the backend its fleet entry names.

    Raises BackendUnavailable when the backend is not built or its engine is not installed,
    ModelWeightsNotFound when the weights cannot be located, BackendError when the engine fails
    to load them.
    """
    entry = _REGISTRY.get(spec.backend)
    if entry is None:
        raise BackendUnavailable(
            f"model {spec.name!r}: the {spec.backend.value!r} backend is not available in this build"
        )
    module_name, class_name, extra = entry
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        install = f"pip install 'switchyard[{extra}]'" if extra else "pip install switchyard"
        raise BackendUnavailable(
            f"model {spec.name!r}: the {spec.backend.value!r} backend needs an engine that is not "
            f"installed ({exc}); install it with: {install}"
        ) from exc
    backend_class = getattr(module, class_name)
    backend: Backend = backend_class.from_settings(spec, settings)
    return backend
