"""`sollol models list|import`: the models in Ollama's store, and putting a GGUF file there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from sollol.cli import config_option, handle_errors, load_for_cli
from sollol.errors import SollolError

from .store import parse_name, resolve, store_roots, stored_names


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@config_option
@handle_errors
def list_models(as_json: bool, config_file: Path | None) -> None:
    """List every model in Ollama's store: name, GGUF path, size, parameters, layers."""
    config, _pm = load_for_cli(config_file)
    roots = store_roots(config.get("ollama_models_dir"))
    rows = [_row(name.display(), root) for name, _manifest, root in stored_names(roots)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no models in " + ", ".join(str(r) for r in roots), err=True)
        return
    click.echo(f"{'NAME':32} {'SIZE':>9} {'PARAMS':>8} {'LAYERS':>6}  GGUF")
    for row in rows:
        if row["error"]:
            click.echo(f"{row['name']:32} {'-':>9} {'-':>8} {'-':>6}  error: {row['error']}")
            continue
        click.echo(f"{row['name']:32} {_human(row['size'], 'B'):>9} "
                   f"{_human(row['parameters'], ''):>8} {row['layers'] or '?':>6}  {row['path']}")


@click.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("name")
@click.option("--store", "store", type=click.Path(file_okay=False, path_type=Path),
              help="The store to write (default: ollama_models_dir, else OLLAMA_MODELS, else "
                   "~/.ollama/models).")
@click.option("--copy", is_flag=True,
              help="Copy the file even where a hard link would do (the store then keeps its "
                   "own bytes if the original changes).")
@click.option("--force", is_flag=True, help="Replace a model stored under NAME already.")
@config_option
@handle_errors
def import_model(file: Path, name: str, store: Path | None, copy: bool, force: bool,
                 config_file: Path | None) -> None:
    """Put the GGUF FILE into Ollama's model store as NAME[:TAG], where the gateway (and
    Ollama) find it: no Ollama is needed on this machine."""
    from sollol.core.gguf_info import read_model_info

    from .store_import import import_gguf

    parsed = parse_name(name)
    if parsed is None:
        raise click.BadParameter(f"{name!r} is not a model name ([namespace/]model[:tag], "
                                 "letters, digits and _.-)", param_hint="NAME")
    config, _pm = load_for_cli(config_file)
    root = store or store_roots(config.get("ollama_models_dir"))[0]
    info = read_model_info(file, name)
    done = import_gguf(root, file, parsed, family=info.architecture, copy=copy, replace=force)
    how = "hard-linked" if done.linked else "copied"
    click.echo(f"imported {parsed.display()}: {done.model.path} ({how} from {file}, "
               f"{done.model.size} bytes, {info.architecture}, {info.layer_count} layers)")
    click.echo(f"manifest {done.manifest}; a running gateway reading {root} serves it by name",
               err=True)


def _row(name: str, root: Path) -> dict[str, Any]:
    """One model's facts; a broken entry is reported, not fatal, so the rest still list."""
    from sollol.core.gguf_info import read_model_info  # gguf and numpy: only when listing

    row: dict[str, Any] = {"name": name, "path": None, "size": None, "parameters": None,
                           "layers": None, "quantization": None, "error": None}
    try:
        resolved = resolve(name, [root])
        if resolved is None:
            raise SollolError("manifest vanished while listing")
        info = read_model_info(resolved.path, name)
    except SollolError as exc:
        row["error"] = str(exc)
        return row
    row.update(path=str(resolved.path), size=resolved.size, parameters=info.parameter_count,
               layers=info.layer_count, quantization=info.quantization)
    return row


def _human(value: int | None, unit: str) -> str:
    if value is None:
        return "?"
    number = float(value)
    for prefix in ("", "K", "M", "G", "T"):
        if number < 1000 or prefix == "T":
            return f"{number:.0f}{prefix}{unit}" if prefix == "" else f"{number:.1f}{prefix}{unit}"
        number /= 1000
    return str(value)
