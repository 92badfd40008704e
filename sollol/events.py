"""A bounded log of routing events that dashboards and tests can read or follow."""

from __future__ import annotations

import asyncio
from collections import deque

import attrs

from sollol.models import RouteEvent


@attrs.define
class EventLog:
    """The last `size` route events, plus live subscribers (each an asyncio queue)."""

    size: int = 1000
    _events: deque[RouteEvent] = attrs.field(init=False)
    _subscribers: set[asyncio.Queue[RouteEvent]] = attrs.field(init=False, factory=set)

    def __attrs_post_init__(self) -> None:
        self._events = deque(maxlen=self.size)

    def append(self, event: RouteEvent) -> None:
        self._events.append(event)
        for queue in self._subscribers:
            if not queue.full():
                queue.put_nowait(event)

    def recent(self, limit: int | None = None) -> list[RouteEvent]:
        events = list(self._events)
        return events[-limit:] if limit else events

    def subscribe(self, maxsize: int = 256) -> asyncio.Queue[RouteEvent]:
        queue: asyncio.Queue[RouteEvent] = asyncio.Queue(maxsize=maxsize)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[RouteEvent]) -> None:
        self._subscribers.discard(queue)
