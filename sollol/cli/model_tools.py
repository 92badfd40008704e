"""`sollol models make-tiny|resolve`: generate test models and find a model's GGUF file."""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import click

from sollol.cli.common import config_option, handle_errors, load_for_cli, operator_gguf
from sollol.errors import ModelFileError, ModelNotFound


@click.group()
def models() -> None:
    """Generate tiny GGUF models and find the GGUF file behind a model name."""


@models.command("make-tiny")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--preset", type=click.Choice(["tiny", "small", "medium", "7b-q4_0"]),
              default="tiny", show_default=True, help="Starting shape; options below change it.")
@click.option("--layers", type=click.IntRange(min=1))
@click.option("--dim", type=click.IntRange(min=2), help="Embedding size.")
@click.option("--heads", type=click.IntRange(min=1))
@click.option("--kv-heads", type=click.IntRange(min=1))
@click.option("--ff", type=click.IntRange(min=1), help="Feed-forward size.")
@click.option("--vocab-size", type=click.IntRange(min=1), help="Pad the vocabulary to this size.")
@click.option("--ctx-size", "--context", "context", type=click.IntRange(min=1),
              help="Context length to record (llama-server's default -c and its cap; preset's "
                   "default 2048; coding agents need 16384).")
@click.option("--dtype", type=click.Choice(["f32", "f16", "q8_0", "q4_0"]))
@click.option("--seed", type=int)
@click.option("--name", help="general.name in the file.")
def make_tiny(path: Path, preset: str, **fields: Any) -> None:
    """Write a real llama-architecture GGUF with random weights (same options, same bytes)."""
    from sollol.core.gguf_info import read_model_info
    from sollol.testing.tiny_models import PRESETS, make_tiny_model

    changes = {key: value for key, value in fields.items() if value is not None}
    try:
        spec = attrs.evolve(PRESETS[preset], **changes)
        spec.check()
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    make_tiny_model(path, spec=spec)
    info = read_model_info(path)
    click.echo(f"{path}: {info.file_size} bytes, {info.parameter_count} parameters, "
               f"{info.layer_count} layers, {info.quantization}")


@models.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--verify", is_flag=True, help="Check the file's sha256 against its digest.")
@config_option
@handle_errors
def resolve(name: str, as_json: bool, verify: bool, config_file: Path | None) -> None:
    """Print the GGUF file behind NAME (a store name such as llama3:8b, or a path)."""
    from sollol.core.gguf_info import read_model_info

    config, pm = load_for_cli(config_file)
    found = operator_gguf(pm, config, name)
    if found is None:
        lists = pm.hook.sollol_gguf_names(config=config)
        known = sorted({n for names in lists for n in names or ()})
        close = closest_names(name, known)
        hint = f"; closest: {', '.join(close)}" if close else (
            f"; known: {', '.join(known[:10])}" if known else "; no model store lists any model")
        raise ModelNotFound(f"model {name!r} not found{hint}")
    if verify:
        verify_digest(found.path, found.digest)
    info = read_model_info(found.path, name)
    if as_json:
        data = {**attrs.asdict(found), "verified": verify, "info": attrs.asdict(info)}
        click.echo(json.dumps(data, indent=2, default=str))
        return
    click.echo(f"{found.path}")
    click.echo(f"  source:       {found.source}")
    click.echo(f"  size:         {found.size} bytes" + (" (sha256 verified)" if verify else ""))
    click.echo(f"  architecture: {info.architecture}, {info.layer_count} layers, "
               f"{info.parameter_count} parameters, {info.quantization}")
    for label, paths in (("projector", found.projectors), ("adapter", found.adapters)):
        for path in paths:
            click.echo(f"  {label}:    {path}")


def closest_names(text: str, names: Sequence[str], limit: int = 5) -> list[str]:
    """Names that look like `text`: close spellings first, then names that contain it."""
    lowered = {n.lower(): n for n in names}
    close = difflib.get_close_matches(text.lower(), list(lowered), n=limit, cutoff=0.5)
    stem = text.lower().split(":")[0]
    contains = [n for n in lowered if stem and stem in n and n not in close]
    return [lowered[n] for n in [*close, *contains][:limit]]


def verify_digest(path: Path, digest: str | None) -> None:
    """Raise ModelFileError unless the file's sha256 is `digest` ("sha256:<hex>")."""
    if not digest or not digest.startswith("sha256:"):
        raise ModelFileError(f"cannot verify {path}: its source records no sha256 digest")
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            sha.update(block)
    if sha.hexdigest() != digest.removeprefix("sha256:"):
        raise ModelFileError(f"{path} is corrupt: sha256 {sha.hexdigest()}, expected {digest}")
