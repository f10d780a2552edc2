"""Which workers may propose now: the driver's bookkeeping of the policy's AgentStreaks verdicts.

An agent that fails the same way again and again (a dead --agent-base-url, a missing key) pauses
its worker, growing pauses, then stops it; the run goes on with the others. Clock arithmetic, no
I/O: the driver prints the lines `note` returns.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from population.console import duration, elided, reason_headline
from population.fleet import DriverError
from population.policy import AgentStreaks


class AgentPauses:
    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self.streaks = AgentStreaks()
        self.paused_until: dict[str, float] = {}      # worker -> when it proposes again
        self.stopped: dict[str, str] = {}             # worker -> why its agent stopped it

    def note(self, worker: str, agent: str, status: str, reason: str, slots: Sequence) -> str | None:
        """A proposal's outcome on `worker`; the line to print when it pauses or stops the worker
        (and how many of `slots` the run goes on with when it stops one)."""
        verdict = self.streaks.note(worker, status, reason)
        self.paused_until.pop(worker, None)
        if verdict is None:
            return None
        count, pause = verdict
        cause = elided(reason_headline(reason), 160)
        if pause is None:
            self.stopped[worker] = f"{worker}'s agent ({agent}) failed {count} times in a row: {cause}"
            left = len(self.usable(slots))
            goes_on = f"; the run goes on with {left} worker{'s' if left != 1 else ''}" if left else ""
            return f"{worker} stopped: its agent ({agent}) failed the same way {count} times in a row: {cause}{goes_on}"
        if pause > 0:
            self.paused_until[worker] = self.clock() + pause
            return (f"{worker}'s agent failed the same way {count} times in a row ({cause}): "
                    f"its next proposal in {duration(pause)}")
        return None

    def may_propose(self, worker: str) -> bool:
        if self.paused_until.get(worker, float("inf")) <= self.clock():
            del self.paused_until[worker]
        return worker not in self.stopped and worker not in self.paused_until

    def usable(self, slots: Sequence) -> list:
        """The live workers whose agent did not stop them."""
        return [slot for slot in slots if not slot.dead and slot.name not in self.stopped]

    def all_paused_for(self, usable: Sequence) -> float | None:
        """When every usable worker is backing off: the seconds until the first may propose."""
        waits = [self.paused_until[slot.name] - self.clock() for slot in usable if slot.name in self.paused_until]
        return max(0.0, min(waits)) if usable and len(waits) == len(usable) else None

    def when_idle(self, slots: Sequence, work_left: bool) -> tuple[str, float]:
        """Nothing is in flight: what the run does next. ("end", 0): nothing is left to hand out, or
        live workers idle; ("back off", s): every usable worker waits s seconds for its agent;
        ("replace", 0): every worker died, the run waits for replacements. Every live worker
        stopped by its agent is a DriverError."""
        if not work_left:
            return "end", 0.0
        live = any(not slot.dead for slot in slots)
        usable = self.usable(slots)
        if live and not usable:
            raise DriverError(f"no worker is left: {'; '.join(sorted(set(self.stopped.values())))}; "
                              "fix the agent, then --resume")
        wait = self.all_paused_for(usable)
        if wait is not None:
            return "back off", wait
        return ("end", 0.0) if live else ("replace", 0.0)
