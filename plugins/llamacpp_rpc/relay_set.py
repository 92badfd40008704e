"""One coordinator's write-behind relays (`rpc_load_relay`): one per rpc-server, see `relay`.

llama-server is given the relays' loopback addresses in `--rpc`; everything else in SOLLOL keeps
using the rpc-servers' own addresses (placement, `attached`, the layer report, status). So the
relays' addresses are also marked attached (nothing may probe them: a probe through a relay is a
probe of an attached rpc-server) and are turned back into the rpc-servers' in the coordinator's
log. Whether a link is alive is the relay's to say: the coordinator's own sockets only reach
loopback.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from . import attached
from .relay import Relay


@attrs.define(eq=False)
class RelaySet:
    """The relays of one coordinator, by the rpc-server address each one fronts."""

    relays: dict[str, Relay] = attrs.field(factory=dict)

    @classmethod
    def start(cls, addresses: Sequence[str], owner: str, link_timeout: float,
              known: Mapping[str, Collection[int]] | None = None,
              on_miss: Callable[[str], None] | None = None,
              folder: Path | None = None) -> RelaySet:
        """Start a relay for each of `addresses`; `known`: hashes each one's cache holds;
        `on_miss(address)`: one of those was not there after all."""
        made = cls()
        try:
            for address in addresses:
                miss = None if on_miss is None else functools.partial(on_miss, address)
                made.relays[address] = Relay(address, frozenset((known or {}).get(address, ())),
                                             link_timeout, folder, miss).start()
        except OSError:
            made.stop()
            raise
        attached.attach(made.addresses(), owner)
        return made

    def addresses(self) -> list[str]:
        """The relays' own addresses, in the order of the rpc-servers (for `--rpc`)."""
        return [relay.address for relay in self.relays.values()]

    def unrelay(self, text: str) -> str:
        """`text` (llama-server's log) with each relay's address replaced by its rpc-server's."""
        for address, relay in self.relays.items():
            text = re.sub(re.escape(relay.address) + r"(?!\d)", address, text)
        return text

    def lost(self) -> list[str]:
        """rpc-servers whose side of the coordinator's connection ended (or never came)."""
        return [a for a, relay in self.relays.items() if relay.stats.lost is not None]

    def delivered(self) -> dict[str, int]:
        """Bytes each relay has handed to its rpc-server's link."""
        return {a: relay.stats.delivered_bytes for a, relay in self.relays.items()}

    def armed(self) -> int:
        """Links on which keepalive and TCP_USER_TIMEOUT are on."""
        return sum(relay.stats.armed for relay in self.relays.values())

    def as_dict(self) -> dict[str, Any]:
        return {a: relay.stats.as_dict() for a, relay in self.relays.items()}

    def stop(self) -> None:
        """Stop every relay (their sessions end; upstream connections are reset)."""
        attached.detach(self.addresses())
        for relay in self.relays.values():
            relay.stop()
