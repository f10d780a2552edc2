"""The real driver on the in-process fake fleet (population/fake_fleet.py) and bench/simulate.py's git
stand-in: no Ray, no git, a virtual clock, so each run takes about a second. What the driver does
with the policy's decisions: every one journaled and closed by a marker, a node lost mid-run, a
resume that replays decisions, and a result recorded by a driver killed before it decided."""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import simulate  # noqa: E402

from population.state import PopulationState  # noqa: E402
from population.store import RunStore  # noqa: E402


def small(**changes) -> simulate.Simulation:
    settings = dict(workers=4, experiments=40, budget_s=30.0, overhead_s=3.0, agent_s=6.0, worktree_s=0.2,
                    population_size=6, crash_rate=0.05, agent_error_rate=0.05, progress_bar=False)
    return simulate.Simulation(**(settings | changes))


def run(sim, runs: Path, simgit=None, fleet_hook=None, **changes):
    driver, simgit = simulate.make_driver(sim, runs, simgit=simgit, **changes)
    if fleet_hook:
        fleet_hook(driver.fleet)
    with simulate.patched_store(sim):
        code = driver.run()
    return code, driver, simgit, RunStore.open(runs / "sim").events()


def test_every_result_gets_its_decisions_closed_by_one_marker(tmp_path):
    code, driver, _, events = run(small(), tmp_path / "runs")
    assert code == 0
    finished = [e["id"] for e in events if e["type"] == "experiment_finished"]
    markers = [e["id"] for e in events if e["type"] == "decided"]
    assert len(finished) == 40 and Counter(markers) == Counter(finished)          # once each
    for exp_id in finished:                   # the marker comes after its result, before the next result
        at = next(i for i, e in enumerate(events) if e["type"] == "experiment_finished" and e["id"] == exp_id)
        closing = next(i for i, e in enumerate(events) if e["type"] == "decided" and e["id"] == exp_id)
        between = [e["type"] for e in events[at + 1:closing]]
        assert "experiment_finished" not in between
        assert set(between) <= {"noise", "champion", "member_culled", "work_queued", "stop"}
    queued = [e for e in events if e["type"] == "work_queued"]
    assert [e["kind"] for e in queued[:3]] == ["baseline"] * 3 and all(e["front"] for e in queued[:3])
    baselines = [e["seed"] for e in events if e["type"] == "experiment_started" and e["kind"] == "baseline"]
    assert baselines[:3] == [0, 1, 2]                 # handed out from --seed on (the simulation's seed is 0)
    assert [e["type"] for e in events].count("noise") >= 1 and driver.state.noise_std > 0


def test_a_node_lost_mid_run_loses_its_work_queues_it_again_and_a_spare_worker_takes_its_place(tmp_path):
    killed = {}

    def hook(fleet):
        fleet.spare = 1
        wait = fleet.wait

        def wait_and_kill(timeout):
            done = wait(timeout)
            if not killed and fleet.clock.t > 200 and fleet.worker("w1").train:
                killed["exp"] = fleet.worker("w1").train[4]
                fleet.kill("w1")
            return done
        fleet.wait = wait_and_kill

    code, driver, _, events = run(small(), tmp_path / "runs", fleet_hook=hook)
    assert code == 0 and killed
    lost = [e for e in events if e["type"] == "experiment_lost"]
    assert killed["exp"] in {e["id"] for e in lost}
    requeued = [e for e in events if e["type"] == "work_queued" and e["reason"].endswith("lost")]
    assert len(requeued) == len(lost) and all(e["front"] and e["attempts"] == 1 for e in requeued)
    started = {e["id"]: e for e in events if e["type"] == "experiment_started"}
    assert {started[e["id"]]["worker"] for e in lost} == {"w1"}
    assert any(s.get("work") == requeued[0]["work"] for s in started.values())     # trained again
    assert "w4" in {s["worker"] for s in started.values()}                          # the spare took w1's place
    assert sum(e["type"] == "experiment_finished" for e in events) == 40


def test_a_resumed_run_replays_its_decisions_and_derives_none_again(tmp_path):
    sim = small(selection="margin")
    code, first, simgit, before = run(sim, tmp_path / "runs", max_experiments=30)
    assert code == 0
    code, driver, _, events = run(sim, tmp_path / "runs", simgit=simgit, resume=True, max_experiments=45)
    assert code == 0
    after = events[len(before):]
    # nothing was in flight or undecided: the resume itself decides nothing
    first_started = next(i for i, e in enumerate(after) if e["type"] == "experiment_started")
    assert [e["type"] for e in after[:first_started]] == ["run_state"]
    assert PopulationState.replay(before, "val_bpb").pending == first.state.pending     # the queue, replayed
    markers = Counter(e["id"] for e in events if e["type"] == "decided")
    assert set(markers.values()) == {1}


def test_a_result_recorded_by_a_driver_killed_before_deciding_is_decided_on_resume(tmp_path):
    sim = small()
    code, _, simgit, events = run(sim, tmp_path / "runs", max_experiments=30)
    assert code == 0
    journal = tmp_path / "runs" / "sim" / "events.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    last = max(i for i, e in enumerate(events) if e["type"] == "experiment_finished")
    journal.write_bytes(b"".join(lines[:last + 1]))      # killed right after the result: no decision, no marker
    undecided = events[last]["id"]
    assert PopulationState.replay(RunStore.open(tmp_path / "runs" / "sim").events(), "val_bpb").undecided() == \
        [undecided]
    code, driver, _, resumed = run(sim, tmp_path / "runs", simgit=simgit, resume=True, max_experiments=30)
    assert code == 0
    after = [e for e in resumed[last + 1:]]
    assert [e["id"] for e in after if e["type"] == "decided"][0] == undecided
    assert not driver.state.undecided()


@pytest.mark.parametrize("workers", [1, 3])
def test_the_noise_is_measured_whatever_the_number_of_workers(tmp_path, workers):
    code, driver, _, events = run(small(workers=workers, crash_rate=0.0), tmp_path / "runs", max_experiments=12)
    assert code == 0
    noise = [e for e in events if e["type"] == "noise"]
    seed_runs = driver.state.members["m0000"].runs
    assert noise and noise[0]["runs"] == len(seed_runs) == 3 and noise[0]["commits"] == 1
    assert noise[0]["std"] == pytest.approx(max(__import__("statistics").stdev(seed_runs), 1e-4 * 1.0), rel=1e-3)


def test_a_spending_cap_stops_new_proposals_in_one_line_and_a_higher_cap_goes_on(tmp_path):
    """--max-gpu-hours (trainings and evaluations): once reached, what is in flight finishes and the
    run ends as finished; --resume with a higher cap proposes again."""
    sim = small(experiments=200)
    cap = 12 * (sim.budget_s + sim.overhead_s) / 3600            # about a dozen trainings
    code, driver, simgit, events = run(sim, tmp_path / "runs", max_gpu_hours=cap)
    assert code == 0 and driver.state.gpu_hours >= cap
    finished = sum(e["type"] == "experiment_finished" for e in events)
    assert 12 <= finished <= 12 + 2 * sim.workers                 # at most what was in flight and prepared
    assert events[-1]["type"] == "run_state" and events[-1]["state"] == "finished"
    assert driver.cap_said.startswith(f"the --max-gpu-hours cap of {cap:g} is reached")
    code, driver, _, resumed = run(sim, tmp_path / "runs", simgit=simgit, resume=True, max_gpu_hours=2 * cap)
    assert code == 0
    assert sum(e["type"] == "experiment_finished" for e in resumed) > finished + 6
