"""The watchdog's decisions, without a driver: when it looks, what it says, what run.json shows."""
from population.watchdog import Watchdog


def test_it_looks_every_minute_or_twice_per_stall_limit():
    dog = Watchdog()
    assert dog.due(100.0, stall_minutes=10) and not dog.due(159.0, stall_minutes=10)
    assert dog.due(160.0, stall_minutes=10)
    assert not dog.due(174.0, stall_minutes=0.5) and dog.due(175.0, stall_minutes=0.5)


def test_a_stall_is_said_once_shown_while_it_lasts_and_cleared_after():
    dog = Watchdog()
    assert dog.look({3: ("agent", 30.0)}, {3: object()}, stall_minutes=1) == ([], None)
    lines, report = dog.look({3: ("agent", 61.0), 4: ("train", 900.0)}, {3: object()}, stall_minutes=1)
    assert lines == ["e0003 stalled: its agent has printed nothing for 61 s"]   # e0004 is no longer in flight
    assert report == [{"id": 3, "stage": "agent", "silent_s": 61}]
    lines, report = dog.look({3: ("agent", 125.0)}, {3: object()}, stall_minutes=1)
    assert lines == [] and report == [{"id": 3, "stage": "agent", "silent_s": 125}]
    assert dog.look({3: ("train", 2.0)}, {3: object()}, stall_minutes=1) == ([], [])    # cleared once
    assert dog.look({}, {}, stall_minutes=1) == ([], None)
