"""Who holds the gateway's connection slots: when they run out, the idle and the greedy give
way, not the newcomer.

Below `max_connections` every connection is let in, whoever opened it (one host may use all the
slots while nobody else wants them: a local benchmark, a busy client). At the limit a new
connection takes a slot from someone else:

1. from a client address holding more than its share (`max_client_share` of the slots): its
   longest-idle kept-alive connection, else any of its connections with no request being
   served (one that has sent nothing yet or is sending its headers); when the newcomer's own
   address is over its share, the newcomer is the one refused;
2. else from the connection idle the longest: kept alive between requests, or open without
   having sent a byte; closing it costs its client a reconnect, nothing more;
3. else the newcomer is answered 503.

A connection serving a request, or streaming a response, is never taken.
"""

from __future__ import annotations

from typing import Protocol

import attrs


class Slot(Protocol):
    """A client connection as the table sees it (the gateway's HTTP protocol object)."""

    peer: str

    def serving(self) -> bool:
        """Whether a request on it is being served (its app task has not answered yet)."""

    def reclaim(self) -> None:
        """Close it to give its slot to another connection."""


@attrs.define
class SlotTable:
    """The open connections by client address, and the kept-alive idle ones, oldest first."""

    max_connections: int
    client_share: float
    _by_peer: dict[str, dict[Slot, None]] = attrs.field(factory=dict)
    _idle: dict[Slot, None] = attrs.field(factory=dict)
    count: int = 0

    @property
    def peer_cap(self) -> int:
        """The most slots one address may hold while others want one."""
        return max(1, int(self.max_connections * self.client_share))

    def admit(self, slot: Slot) -> str | None:
        """Add `slot`, making room when the table is full; a reason when it must be refused."""
        held = self._by_peer.get(slot.peer, {})
        if self.count >= self.max_connections:
            if len(held) >= self.peer_cap:
                return (f"the gateway has {self.max_connections} connections open "
                        f"(max_connections) and {len(held)} are from {slot.peer} (more than "
                        "max_client_share of them); retry shortly")
            victim = self._victim()
            if victim is None:
                return (f"the gateway has {self.max_connections} connections open "
                        "(max_connections), all of them busy; retry shortly")
            self.remove(victim)
            victim.reclaim()
        self._by_peer.setdefault(slot.peer, {})[slot] = None
        self.count += 1
        return None

    def remove(self, slot: Slot) -> None:
        """Forget `slot` (closed, or reclaimed); nothing happens for one never admitted."""
        held = self._by_peer.get(slot.peer)
        if held is None or slot not in held:
            return
        del held[slot]
        if not held:
            del self._by_peer[slot.peer]
        self._idle.pop(slot, None)
        self.count -= 1

    def rest(self, slot: Slot) -> None:
        """`slot` waits for a request (new, or kept alive after answering its requests)."""
        if slot in self._by_peer.get(slot.peer, ()):
            self._idle.pop(slot, None)
            self._idle[slot] = None  # to the end: the most recently idle

    def wake(self, slot: Slot) -> None:
        """A request began on `slot`."""
        self._idle.pop(slot, None)

    def peers(self) -> dict[str, int]:
        """Open connections per client address."""
        return {peer: len(held) for peer, held in self._by_peer.items()}

    def _victim(self) -> Slot | None:
        greedy = max(self._by_peer.values(), key=len, default={})
        if len(greedy) > self.peer_cap:
            idle = next((slot for slot in self._idle if slot in greedy), None)
            if idle is not None:
                return idle
            waiting = next((slot for slot in greedy if not slot.serving()), None)
            if waiting is not None:
                return waiting
        return next(iter(self._idle), None)
