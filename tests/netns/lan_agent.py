"""A process that announces or browses with plugins/cluster_join/lan.py until SIGTERM, for the
multi-host discovery tests (tests/netns/netns_lan.py starts it on a test host).

    lan_agent.py gateway PORT PIN   announce a gateway on every LAN address, port PORT
    lan_agent.py worker NAME PORT   announce a worker NAME whose tunnel is on PORT
    lan_agent.py browse FILE        keep FILE holding the announcing workers as JSON

It prints "ready" once announcing or browsing; SIGTERM sends the goodbye and exits 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
from pathlib import Path

from sollol_plugins.cluster_join import lan


def main(argv: list[str]) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    mode, *args = argv
    if mode == "browse":
        out = Path(args[0])
        browser = lan.WorkerBrowser(lan.lan_addresses("0.0.0.0")).start()
        print("ready", flush=True)
        try:
            while not stop.wait(0.1):
                rows = [w.as_json() for w in browser.workers()]
                out.with_suffix(".tmp").write_text(json.dumps(rows))
                os.replace(out.with_suffix(".tmp"), out)
        finally:
            browser.stop()
        return 0
    if mode == "gateway":
        announcer = lan.announce_gateway("0.0.0.0", int(args[0]), args[1])
    else:  # as `sollol join` does it, from its event loop
        announcer = asyncio.run(lan.announce_worker_async(args[0], int(args[1])))
    if announcer is None:
        print("nothing to announce on", flush=True)
        return 1
    print("ready", announcer.name, flush=True)
    stop.wait()
    if mode == "gateway":
        announcer.stop()
    else:
        asyncio.run(lan.stop_async(announcer))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
