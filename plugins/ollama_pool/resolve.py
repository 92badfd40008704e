"""Hook implementations that expose Ollama's model store: GGUF resolution, names, `models list`.

They carry their own function names (with `specname`) so that they can sit in the package
namespace beside the pool's own hook implementations without clashing; the settings and the
`models list` command are registered by the pool's hooks in `hooks.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import click

from sollol.config import Config, Setting
from sollol.hookspecs import hookimpl
from sollol.models import ResolvedModel

from .store import resolve, store_roots, stored_names

STORE_SETTINGS = (
    Setting("ollama_models_dir", "str", None,
            "Ollama's model store to resolve GGUF files from (default: $OLLAMA_MODELS, else "
            "~/.ollama/models and /usr/share/ollama/.ollama/models).", optional=True),
)


def register_store_settings(register: Callable[[Setting], None]) -> None:
    for setting in STORE_SETTINGS:
        register(setting)


@hookimpl(specname="sollol_resolve_gguf")
def resolve_from_store(model: str, config: Config) -> ResolvedModel | None:
    """A model pulled into Ollama's store; None when no store holds that name."""
    return resolve(model, store_roots(config.get("ollama_models_dir")))


@hookimpl(specname="sollol_gguf_names")
def store_model_names(config: Config) -> Iterable[str]:
    return [name.display() for name, _manifest, _root in
            stored_names(store_roots(config.get("ollama_models_dir")))]


def register_store_commands(cli: click.Group) -> None:
    from .store_cli import import_model, list_models

    group = cli.commands.get("models")
    if isinstance(group, click.Group):
        group.add_command(list_models, "list")
        group.add_command(import_model, "import")
    else:  # the core's `models` group is missing (an older core): offer the commands on their own
        cli.add_command(click.Group("models", commands={"list": list_models,
                                                        "import": import_model},
                                    help="Models in Ollama's store."))
