"""The scale simulation (bench/simulate.py), CPU-sized: the real driver against 50 simulated workers
for 2,000 experiments, plus the state indexes it relies on."""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import simulate  # noqa: E402

from population.context import IN_FLIGHT_SHOWN, build_prompt  # noqa: E402
from population.state import PopulationState  # noqa: E402
from population.store import RunStore  # noqa: E402

WORKERS, EXPERIMENTS = 50, 2000
# Driver CPU per experiment (median of 200 experiments) may grow by at most this factor (+0.5 ms)
# from the 200-400th experiments to the last 200. Building the prompt from every row (the O(n)
# this session removed) grew it about twofold over that range; it is flat now.
GROWTH_BOUND = 1.3


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    # The store in memory where there is /dev/shm: on a disk, CPU time includes the kernel's fsync
    # work, which varies with the other jobs on the machine and would blur the growth test.
    shm = Path("/dev/shm")
    folder = Path(tempfile.mkdtemp(prefix="test-simulate-", dir=shm)) if shm.is_dir() and os.access(shm, os.W_OK) \
        else tmp_path_factory.mktemp("sim")
    # a 30 s budget: the same driver work per experiment, ten times the experiments per virtual hour
    sim = simulate.Simulation(workers=WORKERS, experiments=EXPERIMENTS, budget_s=30.0, overhead_s=3.0,
                              agent_s=6.0, worktree_s=0.2, population_size=16, progress_bar=False)
    try:
        result = simulate.simulate(sim, folder / "runs")
        assert result.code == 0
        yield result
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_every_experiment_is_recorded_exactly_once(outcome):
    events = RunStore.open(outcome.run_dir).events()
    started = [e["id"] for e in events if e["type"] == "experiment_started"]
    ended = [e["id"] for e in events if e["type"] in ("experiment_finished", "experiment_lost")]
    assert sorted(started) == list(range(EXPERIMENTS))
    assert sorted(ended) == list(range(EXPERIMENTS))          # each once: none twice, none missing
    assert not [e for e in events if e["type"] == "experiment_lost"]
    lineage = pq.read_table(outcome.run_dir / "lineage.parquet").to_pandas()
    assert list(lineage["id"]) == list(range(EXPERIMENTS))
    tsv = (outcome.run_dir / "results.tsv").read_text().splitlines()
    assert len(tsv) == EXPERIMENTS + 1
    trainings = sum(len(runs) for runs in outcome.sim.gpu_runs.values())
    assert trainings == int((lineage["status"].isin(["ok", "crash"])).sum())
    assert json.loads((outcome.run_dir / "run.json").read_text())["state"] == "finished"


def test_selection_made_progress_on_the_landscape(outcome):
    seed, champion = simulate.champion_true_value(outcome)
    floor = outcome.sim.landscape.floor
    assert champion < seed - 0.6 * (seed - floor)      # more than half of the way down the bowl


def test_driver_time_per_experiment_does_not_grow_with_the_store(outcome):
    cpu = outcome.driver.cpu

    def quietest_ms(low, high, width=100):
        """The lowest median CPU ms of the windows of `width` experiments in [low, high): the
        other test process slows some windows (SMT siblings share a core), growth with the store
        slows them all."""
        return min(1e3 * statistics.median(cpu[i] for i in range(start, start + width) if i in cpu)
                   for start in range(low, high, width))

    early, late = quietest_ms(200, 600), quietest_ms(EXPERIMENTS - 500, EXPERIMENTS)
    assert late <= GROWTH_BOUND * early + 0.5, f"driver CPU per experiment grew from {early:.2f} to {late:.2f} ms"


def test_the_gpus_stay_busy(outcome):
    busy, window = simulate.gpu_busy(outcome.sim.gpu_runs)
    assert window > 0 and busy > 0.95


def test_the_prompt_from_context_rows_equals_the_prompt_from_every_row(outcome):
    state, driver = outcome.driver.state, outcome.driver
    everything = state.lineage_rows()
    parents = [m.first_id for m in state.living()] + [0, EXPERIMENTS // 3]
    for parent_id in parents:
        full = build_prompt(simulate.PROGRAM_MD, driver.task, everything, parent_id, [])
        assert build_prompt(simulate.PROGRAM_MD, driver.task, state.context_rows(parent_id), parent_id, []) == full
    assert len(state.context_rows(parents[0])) < len(everything) / 10


def test_report_has_a_row_per_store_size_and_the_store_sizes(outcome):
    text = simulate.report(outcome, None)
    assert "| 1,000 |" in text and "| 2,000 |" in text
    assert "lineage.parquet at 2,000" in text and "GPU busy" in text


def test_state_indexes_match_a_scan(tmp_path):
    rng = random.Random(3)
    state = PopulationState("val_bpb")
    for i in range(300):
        state.apply({"type": "experiment_started", "id": i, "kind": "child", "member": f"m{i:04d}",
                     "parent_id": rng.randrange(i) if i else None, "time": float(i)})
        for done in rng.sample(sorted(e.id for e in state.in_flight()), k=min(2, len(state.in_flight()))):
            if rng.random() < 0.1:
                state.apply({"type": "experiment_lost", "id": done, "reason": "node died"})
            else:
                ok = rng.random() < 0.8
                state.apply({"type": "experiment_finished", "id": done,
                             "row": {"status": "ok" if ok else "crash", "val_bpb": 1 - rng.random() / 10 if ok else None,
                                     "commit": f"c{done}"}})
        if i % 7 == 0 and state.living():
            state.apply({"type": "member_culled", "member": rng.choice(state.living()).name, "time": float(i)})
    scan = sorted((e for e in state.experiments.values() if e.phase == "in_flight"), key=lambda e: e.id)
    assert state.in_flight() == scan
    assert state.in_flight(newest=IN_FLIGHT_SHOWN) == scan[-IN_FLIGHT_SHOWN:]
    assert state.next_id() == 300
    assert state.experiment_ids("m0007") == [e.id for e in state.experiments.values() if e.member == "m0007"]
    assert state.counted() == sum(1 for e in state.experiments.values() if e.phase != "lost")
    assert [m.name for m in state.living()] == [m.name for m in sorted(state.members.values(), key=lambda m: m.born)
                                               if m.alive]
    rows = state.lineage_rows()
    assert [r["id"] for r in rows] == sorted(e.id for e in state.experiments.values() if e.phase != "in_flight")
    assert all(r["alive"] == (r["member"] in state.members and state.members[r["member"]].alive) for r in rows)


def test_tables_rewrite_less_often_as_they_grow(tmp_path, monkeypatch):
    import population.store as store_module

    now = [100.0]
    monkeypatch.setattr(store_module.time, "monotonic", lambda: now[0])
    store = RunStore.create(tmp_path / "run", {"lower_is_better": True})
    cost = [2.0]

    def rows():
        now[0] += cost[0]          # the rewrite "takes" cost seconds
        return []

    assert store.write_tables_if_due(rows, "val_bpb", min_interval_s=5, max_share=0.02)
    now[0] += 60                   # past the 5 s floor, inside 2 s / 0.02 = 100 s
    assert not store.write_tables_if_due(rows, "val_bpb", min_interval_s=5, max_share=0.02)
    assert store.write_tables_if_due(rows, "val_bpb", min_interval_s=5)      # without the share: due
    now[0] += 101
    assert store.write_tables_if_due(rows, "val_bpb", min_interval_s=5, max_share=0.02)


def test_bad_arguments_are_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        simulate.parse_args(["--workers", "0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_landscape_has_its_floor_at_the_optimum():
    landscape = simulate.Landscape(seed=5)
    assert math.isclose(landscape.true_value(landscape.optimum), landscape.floor)
    assert landscape.true_value((0.0,) * len(landscape.names)) == pytest.approx(landscape.floor + 0.05)
