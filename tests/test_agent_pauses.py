"""Which workers may propose, and what a run with nothing in flight does: clock arithmetic only."""
from types import SimpleNamespace

import pytest

from population.agent_pauses import AgentPauses
from population.fleet import DriverError
from population.policy import AGENT_FAILURES_TO_STOP


def slots(*names, dead=()):
    return [SimpleNamespace(name=name, dead=name in dead) for name in names]


def fail(pauses, worker, times, fleet):
    return [pauses.note(worker, "claude", "agent_error", "HTTP 401: bad key", fleet) for _ in range(times)]


def test_an_idle_run_ends_backs_off_or_waits_for_replacements():
    now = [100.0]
    pauses = AgentPauses(lambda: now[0])
    fleet = slots("w0", "w1")
    assert pauses.when_idle(fleet, work_left=False) == ("end", 0.0)
    assert pauses.when_idle(fleet, work_left=True) == ("end", 0.0)            # live workers idle
    assert pauses.when_idle(slots("w0", dead=("w0",)), work_left=True) == ("replace", 0.0)
    fail(pauses, "w0", 2, fleet)
    assert pauses.when_idle(fleet, work_left=True) == ("end", 0.0)            # w1 may still propose
    fail(pauses, "w1", 3, fleet)
    step, wait = pauses.when_idle(fleet, work_left=True)
    assert step == "back off" and 0 < wait <= pauses.paused_until["w0"] - now[0]
    now[0] += 10_000
    assert pauses.may_propose("w0") and pauses.when_idle(fleet, work_left=True) == ("end", 0.0)


def test_a_stopped_worker_says_how_many_go_on_and_none_left_is_an_error():
    pauses = AgentPauses(lambda: 0.0)
    fleet = slots("w0", "w1", "w2", dead=("w2",))
    lines = fail(pauses, "w0", AGENT_FAILURES_TO_STOP, fleet)
    assert lines[-1].startswith("w0 stopped: its agent (claude) failed the same way")
    assert lines[-1].endswith("; the run goes on with 1 worker")
    assert not pauses.may_propose("w0")
    lines = fail(pauses, "w1", AGENT_FAILURES_TO_STOP, fleet)
    assert "goes on" not in lines[-1]
    with pytest.raises(DriverError, match="no worker is left: w0's agent .* w1's agent"):
        pauses.when_idle(fleet, work_left=True)
