"""A coordinator's log on disk stays bounded: past its limit it moves to `<name>.1` and the
running llama-server (which appends) writes on from the start of the emptied file."""

from __future__ import annotations

import sys
import time

from sollol_plugins.llamacpp_rpc import procs

CHILD = """
import pathlib, sys, time
sys.stdout.write("old line\\n" * 1000); sys.stdout.flush()
go = pathlib.Path(sys.argv[1])
while not go.exists():
    time.sleep(0.01)
sys.stdout.write("new line\\n"); sys.stdout.flush()
"""


def test_a_log_past_its_limit_moves_aside_and_the_child_writes_on_at_its_start(tmp_path):
    log = tmp_path / "model.log"
    go = tmp_path / "go"
    child = procs.spawn([sys.executable, "-c", CHILD, str(go)], log)
    try:
        while log.stat().st_size < 9000:  # the child's first block is in
            time.sleep(0.01)
        assert not procs.bound_log(log, 100_000)  # under the limit: left alone
        assert procs.bound_log(log, 1000)
        go.touch()
        child.wait(60)
    finally:
        procs.terminate(child, 5)
    assert log.read_text() == "new line\n"  # no hole of NULs where the old bytes were
    assert (tmp_path / "model.log.1").read_text() == "old line\n" * 1000
