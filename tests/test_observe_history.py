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
