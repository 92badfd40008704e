"""What the commands share: the `--config` option, one-line errors, loading the config.

Kept out of the package's `__init__`, which attaches the commands: a command module importing
its options from the package that imports it would close an import cycle.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from sollol.errors import ConfigError, PluginError, SollolError

__all__ = ["UsageFailure", "config_option", "handle_errors", "load_for_cli", "operator_gguf"]

F = TypeVar("F", bound=Callable[..., Any])


class UsageFailure(click.ClickException):
    """A one-line error with exit code 2 (bad config, bad plugin set-up)."""

    exit_code = 2


def handle_errors(func: F) -> F:
    """Turn SOLLOL's errors into one-line CLI messages; config and plugin errors exit 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (ConfigError, PluginError) as exc:
            raise UsageFailure(str(exc)) from None
        except SollolError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper  # type: ignore[return-value]


def config_option(func: F) -> F:
    """The `--config FILE` option shared by commands that read the configuration."""
    return click.option(
        "--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
        help="Config file to use instead of the default (also SOLLOL_CONFIG).",
    )(func)


def load_for_cli(config_file: Path | None = None, overrides: dict[str, Any] | None = None):
    """(config, plugin manager) for a command, with errors as one-line CLI messages."""
    from sollol.core.loading import load  # not the runtime: config commands stay quick

    try:
        return load(path=config_file, overrides=overrides)
    except (ConfigError, PluginError) as exc:
        raise UsageFailure(str(exc)) from None


def operator_gguf(pm: Any, config: Any, name: str) -> Any:
    """The GGUF behind `name` for a command the operator typed: a model the plugins resolve,
    else any GGUF file the name points to (a `sollol.models.ResolvedModel`, or None).

    `gguf_dirs` limits which files a gateway's remote clients may name; a path on this
    machine's command line comes from its operator, who may read it anyway.
    """
    from sollol.core.defaults import gguf_file
    from sollol.core.names import is_file_name

    found = pm.hook.sollol_resolve_gguf(model=name, config=config)
    if found is None and is_file_name(name) and Path(name).expanduser().is_file():
        found = gguf_file(Path(name).expanduser(), name)
    return found
