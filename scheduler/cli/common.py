"""Helpers shared by the CLI modules: settings, the API client, errors as clean exits."""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from pydantic import ValidationError

from scheduler.client import SwitchyardClient
from scheduler.errors import SwitchyardError, Unauthenticated
from scheduler.settings import LOCAL_API_KEY_FILE, Settings

F = TypeVar("F", bound=Callable[..., Any])


def settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        fail(f"invalid SWITCHYARD_* setting: {exc}")
        raise  # unreachable


def client() -> SwitchyardClient:
    current = settings()
    return SwitchyardClient(current.api_url, current.client_api_key())


def fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code)


def clean_errors(command: F) -> F:
    """Turn Switchyard errors into one red line and exit code 1 instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except Unauthenticated as exc:
            fail(f"{exc}\n  client commands send SWITCHYARD_API_KEY, else the key `switchyard up` wrote to "
                 f"{LOCAL_API_KEY_FILE}")
        except SwitchyardError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]
