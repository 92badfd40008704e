"""The gateway's collector tuning keeps its speed but not garbage (issue 27, finding 12).

`sollol run` freezes its start-up objects and makes young collections rare; with the old
thresholds alone a full collection was hundreds of millions of allocations away, so cyclic
garbage that had outlived one young collection (closed connections, cut requests) stayed until
then: RSS grew from 63 to 151 MiB over 430,000 keep-alive requests.

The collector is process-wide, so each check runs in a child process that builds the gateway as
`sollol run` does (`tune_gc=True`), runs its real start-up on an event loop, and then makes
cyclic garbage the young collections cannot free: cycles, each holding 64 KiB, kept alive
through a young collection (promoting them) and only then dropped. Whether they are freed is
read from weakref finalizers, and whether their memory is reused from RSS (batch after batch,
growth of two batches at most, where keeping them would grow by all six); no clock is involved
beyond a generous wait for each batch.
"""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = r"""
import asyncio, gc, json, sys, weakref

from sollol.core.runtime import ClusterRuntime
from sollol.gateway.app import Gateway
from sollol.testing.gauges import rss_bytes

BATCHES, CYCLES, PAYLOAD = 6, 400, 64 * 1024  # 25 MiB a batch

class Node:
    pass

async def main():
    gateway = Gateway(ClusterRuntime.from_config(overrides={"plugins": []}), tune_gc=True)
    await gateway.startup()
    tuned = {"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()}
    freed = []
    before = rss_bytes()
    for batch in range(BATCHES):  # promoted garbage, batch after batch, as a long run makes it
        nodes = []
        for _ in range(CYCLES):
            a, b = Node(), Node()
            a.other, b.other, a.payload = b, a, bytearray(PAYLOAD)
            weakref.finalize(a, freed.append, 1)
            nodes.append(a)
        gc.collect(0)  # the young collection they outlive: now in an older generation
        del nodes, a, b
        waited = 0.0  # until the gateway's own collections free them, or the wait is over
        while len(freed) < CYCLES * (batch + 1) and waited < float(sys.argv[1]):
            await asyncio.sleep(0.1)
            waited += 0.1
    grown = rss_bytes() - before
    await gateway.shutdown()
    print(json.dumps({"freed": len(freed), "cycles": BATCHES * CYCLES, "grown": grown,
                      "batch": CYCLES * PAYLOAD,
                      "collections": gateway.collector.collections, **tuned}))

asyncio.run(main())
"""


def run_child(wait: float) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(wait)], capture_output=True,
                         text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_promoted_cyclic_garbage_is_freed_while_the_tuning_stays(isolated_config) -> None:
    result = run_child(60.0)  # the child reads the isolated config (SOLLOL_CONFIG)
    # the speed-giving tuning is still in place: rare young collections, start-up frozen
    assert result["threshold"][0] >= 50_000 and result["frozen"] > 0, result
    # every promoted cycle was freed while the gateway ran (the test forced no full
    # collection), and each batch reused the memory of the ones before
    assert result["freed"] == result["cycles"], result
    assert result["collections"] >= 1, result
    assert result["grown"] < 2 * result["batch"], result
