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
    appended: int = attrs.field(init=False, default=0)
    """Events appended so far: a reader that polls remembers it and asks `since()`."""
    _events: deque[RouteEvent] = attrs.field(init=False)
    _subscribers: set[asyncio.Queue[RouteEvent]] = attrs.field(init=False, factory=set)

    def __attrs_post_init__(self) -> None:
        self._events = deque(maxlen=self.size)

    def append(self, event: RouteEvent) -> None:
        self._events.append(event)
        self.appended += 1
        for queue in self._subscribers:
            if not queue.full():
                queue.put_nowait(event)

    def recent(self, limit: int | None = None) -> list[RouteEvent]:
        events = list(self._events)
        return events[-limit:] if limit else events

    def since(self, seen: int, limit: int) -> list[RouteEvent]:
        """The newest (at most `limit`) events appended after the first `seen`: polling costs
        the request path nothing, where a subscriber's queue costs every request a put."""
        new = min(self.appended - seen, limit, len(self._events))
        if new <= 0:
            return []
        events = self._events
        return [events[i] for i in range(len(events) - new, len(events))]

    def subscribe(self, maxsize: int = 256) -> asyncio.Queue[RouteEvent]:
        queue: asyncio.Queue[RouteEvent] = asyncio.Queue(maxsize=maxsize)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[RouteEvent]) -> None:
        self._subscribers.discard(queue)
