"""The watchdog: an agent or a training silent for --stall-minutes shows as stalled (the console, the
status line, run.json for the app) before any timeout fires. It only decides; the driver asks the
fleet what each experiment last wrote and applies what it says."""
from __future__ import annotations

from population.console import duration

WATCH_EVERY_S = 60.0           # how often, at most, the driver asks the workers what they last wrote


class Watchdog:
    def __init__(self) -> None:
        self.last = 0.0
        self.stalled: dict[int, tuple[str, float]] = {}   # experiment id -> (stage, silent seconds)

    def due(self, now: float, stall_minutes: float) -> bool:
        """Time to look again: every minute, or twice per --stall-minutes when that is shorter."""
        if now - self.last < min(WATCH_EVERY_S, stall_minutes * 30):
            return False
        self.last = now
        return True

    def look(self, activity: dict[int, tuple[str, float]], in_flight, stall_minutes: float
             ) -> tuple[list[str], list[dict] | None]:
        """From each experiment's (stage, seconds since it last wrote): a line for each one newly
        stalled, and run.json's `stalled` list (None while nothing is or was stalled)."""
        limit = stall_minutes * 60
        stalled = {exp_id: (stage, idle) for exp_id, (stage, idle) in activity.items()
                   if idle >= limit and exp_id in in_flight}
        lines = [f"e{exp_id:04d} stalled: {'its agent' if stage == 'agent' else 'its training'} has printed "
                 f"nothing for {duration(idle)}" for exp_id, (stage, idle) in sorted(stalled.items())
                 if exp_id not in self.stalled]
        report = ([{"id": exp_id, "stage": stage, "silent_s": round(idle)}
                   for exp_id, (stage, idle) in sorted(stalled.items())] if stalled or self.stalled else None)
        self.stalled = stalled
        return lines, report
