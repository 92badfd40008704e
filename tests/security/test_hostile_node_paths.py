"""A hostile or broken node names a local path as its model (llama-server's `/props`
`model_path`): a FIFO nobody writes to, `/dev/stdin`, an endless `/dev/zero`. The gateway never
opens a path a node names: a real `sollol run` behind three such nodes and an honest one starts,
probes all of them, marks the honest node down within a few probe rounds once it is killed (as
without the hostile nodes), never holds the FIFO open, and stops on SIGTERM."""

from __future__ import annotations

import errno
import os
import sys
import time
from pathlib import Path

import httpx
import pytest

from sollol.core.processes import free_port, wait_http
from sollol.testing.echo_node import echo_script

ROUNDS_TO_NOTICE = 4
"""Probe rounds (counted on a hostile node) within which a killed node must be marked down."""


def llama_server_props(path: str) -> dict[str, object]:
    return {"model_path": path, "build_info": "b6000-hostile", "chat_template": "{{ x }}",
            "total_slots": 1, "modalities": {"vision": False}}


def refuse(request):
    return 400, {"error": {"message": "no", "code": 400}}


def health_probes(node) -> int:
    return sum(1 for r in node.requests if r.path == "/health")


def fifo_has_a_reader(fifo: str) -> bool:
    """Whether anyone holds the FIFO open for reading (opening its write end without blocking
    fails with ENXIO while nobody does)."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return False
        raise
    os.close(fd)
    return True


def node_table(url: str) -> dict[str, dict[str, object]]:
    reply = httpx.get(url + "/sollol/nodes", timeout=30)
    return {n["id"]: n for n in reply.json()["nodes"]}


@pytest.mark.parametrize("interval", [0.3])
def test_nodes_naming_local_paths_cannot_freeze_the_gateway(processes, hostile_node, tmp_path,
                                                            sollol_isolated_config, interval):
    fifo = str(tmp_path / "model.gguf")
    os.mkfifo(fifo)
    hostile = [hostile_node(echo_script(refuse, models=[name], props=llama_server_props(path)))
               for name, path in (("fifo", fifo), ("stdin", "/dev/stdin"),
                                  ("zero", "/dev/zero"))]
    honest_port = free_port()
    honest = processes.start("honest-node", [
        sys.executable, "-m", "sollol.testing.emulator", "--port", str(honest_port),
        "--model", "m"])
    honest_url = f"http://127.0.0.1:{honest_port}"
    wait_http(honest_url + "/api/version", process=honest, timeout=60)
    port = free_port()
    addresses = [f"openai://{n.url.removeprefix('http://')}" for n in hostile]
    nodes = ",".join([*addresses, f"127.0.0.1:{honest_port}"])
    gateway = processes.start("sollol-run", [
        sys.executable, "-m", "sollol", "run", "--port", str(port)],
        env={**os.environ, "SOLLOL_OLLAMA_NODES": nodes,
             "SOLLOL_MODEL_SHARDING_ENABLED": "false", "SOLLOL_HEALTH_INTERVAL": str(interval),
             "SOLLOL_GGUF_DIRS": str(tmp_path)})  # even the folder the FIFO is in
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/api/version", process=gateway, timeout=120)  # it starts
    # every node was probed and learned (/props asked), the honest one serves
    deadline = time.monotonic() + 120
    while not all(any(r.path == "/props" for r in n.requests) for n in hostile):
        assert time.monotonic() < deadline and gateway.alive(), gateway.log_text()
        time.sleep(0.1)
    table = node_table(url)
    assert all(table[a.removeprefix("openai://")]["health"] == "healthy" for a in addresses), table
    reply = httpx.post(url + "/api/generate", json={"model": "m", "prompt": "hi",
                                                     "stream": False}, timeout=60)
    assert reply.status_code == 200, reply.text
    assert not fifo_has_a_reader(fifo)

    honest.kill()
    before = health_probes(hostile[0])
    while node_table(url)[f"127.0.0.1:{honest_port}"]["health"] == "healthy":
        assert health_probes(hostile[0]) - before <= ROUNDS_TO_NOTICE, node_table(url)
        time.sleep(interval / 3)
    assert health_probes(hostile[0]) - before <= ROUNDS_TO_NOTICE
    assert not fifo_has_a_reader(fifo)
    assert gateway.stop(timeout=30) == 0, gateway.log_text()  # SIGTERM: a clean exit


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "/dev/stdin", "folder"])
def test_reading_a_model_file_never_blocks_on_what_is_not_a_file(tmp_path, kind):
    """Defence in depth: the GGUF reader itself refuses FIFOs, devices and folders unread."""
    from sollol.core.gguf_info import read_model_info
    from sollol.errors import ModelFileError

    path = tmp_path / "x.gguf"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:
        path = Path(kind)
    with pytest.raises(ModelFileError):
        read_model_info(path, "x")
