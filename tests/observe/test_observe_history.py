"""The dashboard's last hour: fixed buckets, rates, percentiles, bounded memory."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sollol.observe.history import SAMPLES, History

T0 = 1_800_000_000.0  # a bucket boundary (divisible by 10)


def test_buckets_rates_and_percentiles() -> None:
    history = History(step=10, span=60)
    for i in range(10):  # ten requests in the bucket [T0, T0+10), one of them failing
        history.add(T0 + i, ok=i != 3, duration_s=0.1 * (i + 1), tokens=5)
    history.add(T0 + 25, ok=True, duration_s=2.0, tokens=None)  # a gap, then one more
    series = history.series(now=T0 + 59)
    assert series["step"] == 10 and series["start"] == T0
    assert len(series["requests_per_second"]) == 6
    assert series["requests_per_second"][:3] == [1.0, 0.0, 0.1]
    assert series["errors_per_second"][0] == 0.1
    assert series["tokens_per_second"][0] == 5.0
    assert series["latency_p50_s"][0] == 0.6 and series["latency_p95_s"][0] == 1.0
    assert series["latency_p50_s"][1] is None  # no requests: no latency, not zero
    rates = history.rates(60.0, now=T0 + 59)
    # the window starts at the bucket boundary at or before now - 60 s: T0 - 10
    assert rates["requests_per_second"] == round(11 / 69, 3)


def test_the_newest_bucket_is_a_rate_over_the_time_it_covered() -> None:
    history = History(step=10, span=60)
    history.add(T0 + 50, ok=True, duration_s=0.1, tokens=8)
    history.add(T0 + 51, ok=True, duration_s=0.1, tokens=8)
    series = history.series(now=T0 + 52)  # the bucket [T0+50, T0+60) is 2 s old
    assert series["requests_per_second"][-1] == 1.0
    assert series["tokens_per_second"][-1] == 8.0


def test_old_buckets_fall_out_of_the_window() -> None:
    history = History(step=10, span=60)
    history.add(T0, ok=True, duration_s=0.1, tokens=1)
    history.add(T0 + 3600, ok=True, duration_s=0.1, tokens=1)
    series = history.series(now=T0 + 3601)
    assert sum(series["requests_per_second"][:-1]) == 0
    assert len(history._buckets) <= 6


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 200), st.booleans(), st.floats(0, 100)), max_size=600))
def test_any_order_of_events_keeps_memory_bounded(events) -> None:
    history = History(step=10, span=60)
    for offset, ok, duration in events:
        history.add(T0 + offset, ok, duration, 1)
    assert len(history._buckets) <= 6
    assert all(len(b.durations) <= SAMPLES for b in history._buckets)
    assert all(len(v) == 6 for k, v in history.series(now=T0 + 200).items()
               if isinstance(v, list))


def test_event_log_since_returns_the_newest_unseen_events() -> None:
    from sollol.core.events import EventLog
    from sollol.models import RouteEvent

    log = EventLog(size=5)

    def event(i: int) -> RouteEvent:
        return RouteEvent(model=f"m{i}", endpoint="chat", api="ollama", route="pool",
                          policy="", reason="", backend="n", status=200, ok=True,
                          duration_s=0.1)

    assert log.since(0, 10) == []
    for i in range(3):
        log.append(event(i))
    assert [e.model for e in log.since(0, 10)] == ["m0", "m1", "m2"]
    assert [e.model for e in log.since(1, 10)] == ["m1", "m2"]
    assert [e.model for e in log.since(0, 2)] == ["m1", "m2"]  # the newest when limited
    for i in range(3, 12):
        log.append(event(i))
    assert [e.model for e in log.since(3, 100)] == ["m7", "m8", "m9", "m10", "m11"]
    assert log.since(log.appended, 10) == []


def test_a_request_row_carries_every_event_field() -> None:
    import attrs

    from sollol.models import RouteEvent
    from sollol.observe.recorder import request_row

    event = RouteEvent(model="m", endpoint="chat", api="ollama", route="pool", policy="p",
                       reason="r", backend="n", status=200, ok=True, duration_s=0.5,
                       tokens=10, ttft_s=0.1, failovers=("connect",))
    row = request_row(event)
    assert set(row) == {f.name for f in attrs.fields(RouteEvent)} | {"tokens_per_second"}
    assert row["tokens_per_second"] == 25.0  # 10 tokens in the 0.4 s after the first
