"""`sollol shard status|logs|unload` and `sollol rpc serve|seed|install-service|add|remove`."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from sollol.cli import config_option, handle_errors, load_for_cli, operator_gguf
from sollol.cli.gateway_client import (
    call,
    gateway_address,
    gateway_client,
    gateway_option,
    gateway_url,
    item,
    read_json,
    refusal_hint,
)

from .shard_unload import unload

if TYPE_CHECKING:
    from sollol.llamacpp import Binaries, Device

GIB = 1024**3


@click.group()
def shard() -> None:
    """Model sharding: layer distribution, coordinator logs, unloading a model."""


shard.add_command(unload)


@shard.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--gateway", "--url", "url", metavar="URL",
              help="Gateway to ask (default: gateway_host:gateway_port from the config).")
@click.option("--local", is_flag=True, help="Do not ask a gateway; read pid files and probe.")
@config_option
@handle_errors
def status(as_json: bool, url: str | None, local: bool, config_file: Path | None) -> None:
    """Show rpc-servers and each coordinator's layer distribution.

    Asks the running gateway first (GET /sollol/routes/sharding): it knows live health and
    in-flight requests. Without one, it reads the coordinators' pid files and saved reports and
    probes only the rpc-servers no live coordinator holds (a probe must never reach a held one).
    """
    config, _pm = load_for_cli(config_file)
    data = None if local else _from_gateway(url or gateway_address(config))
    if data is None:
        from .shard_status import local_status

        data = local_status(config)
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    from .shard_status import render

    click.echo(render(data))


def _from_gateway(url: str) -> dict[str, Any] | None:
    import httpx

    try:
        with gateway_client(url, timeout=3.0) as client:
            response = client.get("/sollol/routes/sharding")
    except httpx.HTTPError:
        return None
    if response.status_code in (401, 403):
        # a gateway is there: its pid files and probes would answer something else
        status = response.status_code
        raise click.ClickException(f"gateway {url} refused GET /sollol/routes/sharding (HTTP "
                                   f"{status}){refusal_hint(status)}; --local reads this "
                                   "machine's pid files instead")
    try:
        data = read_json(response)
    except ValueError:
        data = None
    if response.status_code != 200 or not isinstance(data, dict):
        click.secho(f"warning: {url} is not a SOLLOL gateway with sharding (HTTP "
                    f"{response.status_code}); reading local pid files", fg="yellow", err=True)
        return None
    return {**data, "source": f"gateway {url}"}


@shard.command("logs")
@click.argument("model")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl-C to stop).")
@click.option("-n", "--lines", default=100, show_default=True, help="Lines of history to show.")
@click.option("--gateway", "--url", "url", metavar="URL",
              help="Gateway to ask (default: gateway_host:gateway_port from the config).")
@click.option("--local", is_flag=True, help="Do not ask a gateway; use the config's state dir.")
@config_option
@handle_errors
def logs(model: str, follow: bool, lines: int, url: str | None, local: bool,
         config_file: Path | None) -> None:
    """Print (and follow) the coordinator log of MODEL.

    The running gateway says where its coordinators keep their logs (a `sollol run --local`
    cluster keeps them in its run folder, not the config's state dir); without one, the
    config's `rpc_state_dir` is read.
    """
    from .log_tail import print_log
    from .options import slug, state_dir

    config, _pm = load_for_cli(config_file)
    folder = state_dir(config)
    data = None if local else _from_gateway(url or gateway_address(config))
    if data is not None and data.get("state_dir") and Path(data["state_dir"]).is_dir():
        folder = Path(data["state_dir"])  # on this machine: the gateway's own folder
    path = folder / "logs" / f"{slug(model)}.log"
    if not path.exists():
        known = sorted(p.stem.rsplit("-", 1)[0] for p in path.parent.glob("*.log"))
        hint = f" (logs exist for: {', '.join(known)})" if known else ""
        raise click.ClickException(f"no coordinator log for {model!r} at {path}{hint}")
    print_log(path, lines, follow)


@click.group()
def rpc() -> None:
    """rpc-servers: run one on this machine (a shard for model sharding), or add and remove
    them on a running gateway."""


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _warn_if_open(host: str) -> None:
    if not _is_loopback(host):
        click.secho(f"warning: binding to {host}: ggml-rpc-server has no authentication; anyone "
                    "who can reach this port can run code on its devices. Use a trusted network "
                    "only.", fg="yellow", err=True)


def _serving(config: Any) -> Binaries:
    """The binaries to serve with: a GPU build's rpc-server from the cache when there is one."""
    from sollol.llamacpp import find_binaries, for_serving

    return for_serving(find_binaries(config))


def _rpc_binary(config: Any) -> Path:
    return _serving(config).rpc_server


def _devices(binary: Binaries, requested: str | None, env: dict[str, str]) -> list[Device]:
    """The devices to serve (`--devices`, else every GPU); warns when a visible GPU goes unused."""
    from sollol.llamacpp import rpc_server_devices, visible_gpus

    from .rpc_devices import choose, gpu_warning

    serving = choose(requested, rpc_server_devices(binary.rpc_server, env))
    warning = gpu_warning(serving, visible_gpus(), binary.backend)
    if warning and not requested:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    return serving


@rpc.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=50052, show_default=True, type=click.IntRange(1, 65535))
@click.option("--threads", type=click.IntRange(1), help="CPU threads (default: llama.cpp's).")
@click.option("--cache", "cache", type=click.Path(file_okay=False, path_type=Path),
              help="Keep a tensor cache in DIR/rpc (helps reloads over slow links).")
@click.option("--seed", "seeds", multiple=True, metavar="MODEL",
              help="Before serving, fill the tensor cache from MODEL on this machine (a name in "
                   "its Ollama store or a GGUF path), so a first load sends hashes, not weights "
                   "(repeatable; turns the cache on).")
@click.option("--client-timeout", type=click.FloatRange(min=0), default=20.0, show_default=True,
              metavar="SECONDS",
              help="Drop a client (a coordinator) that stops answering for this long, e.g. "
                   "behind a cut link, so the next one can connect; 0: run ggml-rpc-server "
                   "in this process's place, with no timeout.")
@click.option("--devices", metavar="NAMES",
              help="Devices to serve, comma-separated, as llama.cpp names them (e.g. "
                   "Vulkan0,CUDA0 or CPU; see `sollol llamacpp which`). Default: every GPU "
                   "device of the binary, else the CPU.")
@config_option
@handle_errors
def serve(host: str, port: int, threads: int | None, cache: Path | None,
          seeds: tuple[str, ...], client_timeout: float, devices: str | None,
          config_file: Path | None) -> None:
    """Run ggml-rpc-server in the foreground, as a child that drops silent clients (or, with
    --client-timeout 0, in this process's place)."""
    from .rpc_devices import forget, record
    from .sharding_route import state_dir

    config, pm = load_for_cli(config_file)
    binary = _serving(config)
    env = dict(os.environ)
    serving = _devices(binary, devices, env)
    _warn_if_open(host)
    argv = [str(binary.rpc_server), "-H", host, "-p", str(port),
            "-d", ",".join(d.name for d in serving)]
    if threads:
        argv += ["-t", str(threads)]
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        env["LLAMA_CACHE"] = str(cache.resolve())  # rpc-server's -c takes no folder
    if cache is not None or seeds:
        argv.append("-c")
    if seeds:
        from .seed import rpc_cache_dir

        _seed_models(config, pm, seeds, rpc_cache_dir(env))
    click.echo(f"starting {' '.join(argv)}", err=True)
    click.echo("serving " + "; ".join(d.line() for d in serving), err=True)
    names = record(state_dir(config) / "rpc-servers", host, port, serving)
    sys.stdout.flush()
    if not client_timeout:
        # same pid: the record stays valid while it runs; SIGPIPE ignored, as server_child does
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        os.execve(argv[0], argv, env)
    from .watch import serve as watched

    try:
        code = watched(argv, env, client_timeout,
                       lambda text: click.secho(f"warning: {text}", fg="yellow", err=True))
    finally:
        forget(names)
    sys.exit(code)


@rpc.command("seed")
@click.argument("models", nargs=-1, required=True)
@click.option("--cache", "cache", type=click.Path(file_okay=False, path_type=Path),
              help="The folder given to `sollol rpc serve --cache` (default: llama.cpp's cache, "
                   "$LLAMA_CACHE).")
@click.option("--layers", metavar="RANGES",
              help="Only the layers this shard will hold, as llama.cpp numbers them (e.g. "
                   "0-10, or 22-32 where 32 is a 32-layer model's output layer; `sollol shard "
                   "status` shows each shard's range). Default: every tensor over 10 MiB.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@config_option
@handle_errors
def seed_command(models: tuple[str, ...], cache: Path | None, layers: str | None, as_json: bool,
                 config_file: Path | None) -> None:
    """Fill this machine's rpc-server tensor cache from MODELS it has (Ollama store names or
    GGUF paths): a coordinator's first load then sends hashes instead of weights."""
    from .seed import rpc_cache_dir
    from .tensors import parse_layers

    try:
        chosen = parse_layers(layers) if layers is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--layers") from None
    config, pm = load_for_cli(config_file)
    env = dict(os.environ)
    if cache is not None:
        env["LLAMA_CACHE"] = str(cache.resolve())
    reports = _seed_models(config, pm, models, rpc_cache_dir(env), quiet=as_json, layers=chosen)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in reports], indent=2))


def _seed_models(config: Any, pm: Any, models: tuple[str, ...], folder: Path,
                 quiet: bool = False, layers: set[int] | None = None) -> list[Any]:
    from sollol.errors import ModelNotFound

    from .seed import seed

    reports = []
    for model in models:
        resolved = operator_gguf(pm, config, model)  # any GGUF path: the operator typed it
        if resolved is None and Path(model).expanduser().is_file():
            raise ModelNotFound(f"{model} is not a GGUF file (it does not start with 'GGUF')")
        if resolved is None:
            raise ModelNotFound(f"model {model!r} not found on this machine (an Ollama store "
                                "name or a path to a GGUF file)")
        say = None if quiet else (lambda text: click.echo(text, err=True))
        report = seed(resolved.path, folder, say, layers)
        reports.append(report)
        if not quiet:
            click.echo(f"{model}: {report.written} tensor(s) written "
                       f"({report.bytes_written / GIB:.2f} GiB), {report.present} already there, "
                       f"of {report.tensors} over 10 MiB, in {folder} ({report.seconds:.1f}s)",
                       err=True)
    return reports


@rpc.command("install-service")
@click.option("--dry-run", is_flag=True, help="Print the unit instead of writing it.")
@click.option("--user", "user_unit", is_flag=True, help="A systemd user unit (no root needed).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=50052, show_default=True, type=click.IntRange(1, 65535))
@click.option("--threads", type=click.IntRange(1))
@click.option("--cache", is_flag=True, help="Enable the rpc-server tensor cache.")
@click.option("--client-timeout", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="As `sollol rpc serve --client-timeout` (default: serve's).")
@click.option("--name", default="sollol-rpc", show_default=True, help="Unit name.")
@click.option("--run-as", help="Account for a system unit (default: $SUDO_USER, else a "
                               "DynamicUser).")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the unit here instead of systemd's folder.")
@click.option("--allow", "allow_text", metavar="CIDR,...",
              help="Networks that may connect (IPAddressAllow; all others are dropped), e.g. "
                   "the gateway's: 10.0.0.2/32.")
@config_option
@handle_errors
def install_service(dry_run: bool, user_unit: bool, host: str, port: int, threads: int | None,
                    cache: bool, client_timeout: float | None, name: str, run_as: str | None,
                    output: Path | None, allow_text: str | None,
                    config_file: Path | None) -> None:
    """Write a hardened systemd unit that runs `sollol rpc serve` (ggml-rpc-server, with the
    client timeout that frees it after a cut link).

    Refused, with the fix, when the unit's account could not read the programs it runs.
    """
    from sollol.cli.service import emit_unit, program_needs, refuse_unreadable
    from sollol.cli.unit_access import Need

    from .rpc_unit import ServiceSpec, parse_allow, render

    try:
        allow = parse_allow(allow_text) if allow_text is not None else ()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    config, _pm = load_for_cli(config_file)
    binary = _rpc_binary(config)  # its folder, as found, becomes the unit's SOLLOL_LLAMA_CPP_DIR
    _warn_if_open(host)
    if not allow and not _is_loopback(host):
        click.secho("warning: no --allow: any machine that can reach the port may connect; "
                    "pass --allow with the gateway's address (e.g. --allow 10.0.0.2/32)",
                    fg="yellow", err=True)
    run_as = None if user_unit else (run_as or os.environ.get("SUDO_USER") or None)
    if not user_unit:
        refuse_unreadable([*program_needs(), Need(binary, "ggml-rpc-server", execute=True)],
                          run_as)
    spec = ServiceSpec(Path(sys.executable), binary.parent, host, port, threads, cache,
                       client_timeout, user_unit, run_as, allow)
    try:
        text = render(spec)
    except ValueError as exc:  # a program path systemd cannot run
        raise click.ClickException(str(exc)) from None
    emit_unit(text, name, user_unit, output, dry_run)


@rpc.command("add")
@click.argument("address")
@gateway_option
@config_option
@handle_errors
def rpc_add(address: str, gateway: str | None, config_file: Path | None) -> None:
    """Add the rpc-server at ADDRESS (host:port) to the running gateway's sharding route.

    It is probed once; the next coordinator started can use it. It stays until removed (also
    through re-discovery and config reloads); add it to `rpc_backends` to keep it after a
    restart.
    """
    url = gateway_url(config_file, gateway)
    result = call(url, "POST", "/sollol/rpc", {"address": address})
    backend = result.get("backend") or {}
    if not result.get("added"):
        click.echo(result.get("detail") or f"{address} was already an rpc-server")
        return
    state = "healthy" if backend.get("healthy") else "not healthy"
    click.echo(f"added rpc-server {backend.get('address', address)} to {url}: {state} "
               f"({backend.get('detail', '')})")


@rpc.command("remove")
@click.argument("address")
@gateway_option
@config_option
@handle_errors
def rpc_remove(address: str, gateway: str | None, config_file: Path | None) -> None:
    """Remove the rpc-server ADDRESS (host:port) from the running gateway.

    A coordinator using it drains: its requests in flight finish, then it stops, and the next
    request for its model starts one on the remaining rpc-servers.
    """
    url = gateway_url(config_file, gateway)
    result = call(url, "DELETE", item("/sollol/rpc", address))
    for entry in result.get("removed", []):
        drained = entry.get("draining") or []
        tail = f"; draining {', '.join(drained)}" if drained else ""
        click.echo(f"removed rpc-server {entry['address']} from {url}{tail}")
