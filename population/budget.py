"""The budget, measured from outside the training (pure).

The harness times the training process and samples how busy its device was (usage.py). A train
file can lie about its own `training_seconds`, raise the budget inside the file, or train during
steps it calls untimed; each makes the process run, or keep its device busy, longer beyond the
budget than the seed does. Three rules, each naming itself in the reason:

1. Reported: the file's own `training_seconds` at most 2 % + 1 s over the run's budget (an honest
   file that changed its budget says so).
2. Wall: seconds beyond the budget at most twice the seed's (median of its ok runs) plus
   `wall_allowance_s` (--overhead-allowance, default 60 s). Generous on purpose: a child with a new
   model shape compiles cold (tens of seconds on a GPU, the device idle), and that must stay legal.
3. Busy: device-busy seconds beyond the budget at most 1.5 times the seed's plus 5 % of the budget
   plus 5 s. Compiling, importing and saving keep a GPU idle; training steps keep it busy, timed or
   not. On an H100 the seed is busy about 4 s beyond 300 s (11 warm-up steps), so 150 untimed steps
   (about 50 s) break the rule while a model twice as slow per step (8 s) does not.

Before any seed run has finished there is no reference: only rule 1 applies.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Iterable

REPORT_SLACK = 1.02
REPORT_SLACK_S = 1.0
BUSY_FACTOR = 1.5
BUSY_BUDGET_SHARE = 0.05
BUSY_SLACK_S = 5.0
DEFAULT_WALL_ALLOWANCE_S = 60.0


def excess(seconds: Iterable[float | None], budget_s: float) -> float | None:
    """Median seconds beyond the budget of the seed's ok runs; None before any."""
    over = [s - budget_s for s in seconds if s is not None and math.isfinite(s)]
    return statistics.median(over) if over else None


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def budget_violation(budget_s: float, wall_s: float, reported_s: float | None, busy_s: float | None,
                     seed_wall_excess: float | None, seed_busy_excess: float | None,
                     wall_allowance_s: float = DEFAULT_WALL_ALLOWANCE_S) -> str | None:
    """Why this training broke the budget rule (one line naming the rule), or None."""
    if _finite(reported_s) and reported_s > budget_s * REPORT_SLACK + REPORT_SLACK_S:
        return (f"budget rule: the file reports {reported_s:.1f} s of training against the run's budget of "
                f"{budget_s:g} s (the budget is the run's, not the file's)")
    if seed_wall_excess is not None:
        over, allowed = wall_s - budget_s, 2 * max(seed_wall_excess, 0.0) + wall_allowance_s
        if over > allowed:
            return (f"budget rule: the training process ran {wall_s:.0f} s, {over:.0f} s beyond the {budget_s:g} s "
                    f"budget; the seed needs {seed_wall_excess:.0f} s beyond it (allowed: twice that plus "
                    f"{wall_allowance_s:g} s); work outside the timed steps counts")
    if seed_busy_excess is not None and _finite(busy_s):
        over = busy_s - budget_s
        allowed = BUSY_FACTOR * max(seed_busy_excess, 0.0) + BUSY_BUDGET_SHARE * budget_s + BUSY_SLACK_S
        if over > allowed:
            return (f"budget rule: the device was busy {busy_s:.0f} s, {over:.0f} s beyond the {budget_s:g} s budget; "
                    f"the seed's is busy {seed_busy_excess:.0f} s beyond it (allowed {allowed:.0f} s); "
                    "training steps count whether the file times them or not")
    return None
