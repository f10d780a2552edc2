"""The budget measured from outside (population/budget.py, population/usage.py): pure rules, and
busy seconds sampled from a real process."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from population.budget import budget_violation, excess
from population.usage import BusySampler

BUDGET = 300.0


def test_the_seeds_excess_is_the_median_of_its_runs_beyond_the_budget():
    assert excess([320.0, 322.0, 360.0, None, float("nan")], BUDGET) == 22.0
    assert excess([], BUDGET) is None


def test_an_honest_child_passes_even_with_a_cold_compile():
    # seed: 21 s beyond the budget in wall time, 4 s busy; the child compiles 40 s longer (GPU idle)
    assert budget_violation(BUDGET, wall_s=361.0, reported_s=300.2, busy_s=305.0, seed_wall_excess=21.0,
                            seed_busy_excess=4.0) is None


@pytest.mark.parametrize("wall, reported, busy, needle", [
    (910.0, 900.0, 880.0, "the file reports 900.0 s"),            # a raised budget, said honestly
    (910.0, 300.0, 880.0, "the training process ran 910 s"),      # a longer training, reported as the budget
    (345.0, 300.0, 352.0, "the device was busy 352 s"),           # 150 untimed steps (~50 s of GPU work)
])
def test_training_outside_the_budget_breaks_the_rule_named(wall, reported, busy, needle):
    reason = budget_violation(BUDGET, wall_s=wall, reported_s=reported, busy_s=busy, seed_wall_excess=21.0,
                              seed_busy_excess=4.0)
    assert reason.startswith("budget rule:") and needle in reason


def test_before_any_seed_run_only_the_files_own_report_is_checked():
    assert budget_violation(BUDGET, 900.0, 300.0, 880.0, None, None) is None
    assert "reports" in budget_violation(BUDGET, 900.0, 900.0, None, None, None)


@pytest.mark.parametrize("work, busy", [("import time\nt = time.time()\nwhile time.time() - t < 1.5: pass\n", True),
                                        ("import time; time.sleep(1.5)", False)])
def test_busy_seconds_count_the_cpu_a_training_uses_not_the_time_it_holds(work, busy):
    proc = subprocess.Popen([sys.executable, "-c", work], start_new_session=True)
    sampler = BusySampler("cpu", proc.pid).start()
    _, _, usage = os.wait4(proc.pid, 0)               # what the kernel counted (a loaded machine gives less)
    proc.returncode = 0
    time.sleep(0.3)
    seconds = sampler.stop()
    used = usage.ru_utime + usage.ru_stime
    assert seconds == pytest.approx(used, abs=0.35)
    assert (used > 0.3) if busy else (seconds < 0.3), (seconds, used)
