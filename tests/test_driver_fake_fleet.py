"""The real driver on the in-process fake fleet (population/fake_fleet.py) and bench/simulate.py's git
stand-in: no Ray, no git, a virtual clock, so each run takes about a second. What the driver does
with the policy's decisions: every one journaled and closed by a marker, a node lost mid-run, a
resume that replays decisions, and a result recorded by a driver killed before it decided."""
from __future__ import annotations

import json
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
    driver, simgit = simulate.make_driver(sim, runs, simgit=simgit or simulate.SimGit(sim), **changes)
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
        assert set(between) <= {"noise", "champion", "member_culled", "work_queued", "stop", "endgame"}
    queued = [e for e in events if e["type"] == "work_queued"]
    assert [e["kind"] for e in queued[:3]] == ["baseline"] * 3 and all(e["front"] for e in queued[:3])
    baselines = [e["seed"] for e in events if e["type"] == "experiment_started" and e["kind"] == "baseline"]
    assert baselines[:3] == [0, 1, 2]                 # handed out from --seed on (the simulation's seed is 0)
    assert [e["type"] for e in events].count("noise") >= 1 and driver.state.noise_std > 0
    # every training's loss curve is kept beside its run.log (population/curves.py), none for a crash
    rows = {e["id"]: e["row"] for e in events if e["type"] == "experiment_finished"}
    for exp_id, row in rows.items():
        curve = tmp_path / "runs" / "sim" / "experiments" / str(exp_id) / "curve.json"
        if row["status"] == "ok":
            points = json.loads(curve.read_text())["points"]
            assert len(points) == 21 and points[0][0] == 0.0 and points[-1][0] == 1.0
            assert points[-1][1] == pytest.approx(row["val_bpb"], abs=1e-6)
        else:
            assert not curve.exists()


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
    requeued = [e for e in events if e["type"] == "work_queued" and e.get("lost") is not None]
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
    meta = json.loads((journal.parent / "run.json").read_text())
    meta["journal_events"] = last + 1                     # ... and before its tables counted the events after it
    (journal.parent / "run.json").write_text(json.dumps(meta))
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


# ---------------------------------------------------------------- a resume never loses, restarts or changes what was recorded (issue 29)

def _files(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != ".lock"}


def _refused(sim, runs: Path, simgit, match: str, **changes) -> None:
    """--resume refuses before writing anything: every file of the store and every branch as before."""
    from population.fleet import DriverError
    from population.store import StoreError

    run_dir = runs / "sim"
    files, refs = _files(run_dir), dict(simgit.refs)
    driver, _ = simulate.make_driver(sim, runs, simgit=simgit, resume=True, **changes)
    with simulate.patched_store(sim), pytest.raises((DriverError, StoreError), match=match) as refusal:
        driver.run()
    assert "\n" not in str(refusal.value)
    assert _files(run_dir) == files and simgit.refs == refs


def test_a_resume_whose_journal_is_gone_or_cut_refuses_and_writes_nothing(tmp_path):
    sim = small()
    runs = tmp_path / "runs"
    code, _, simgit, events = run(sim, runs, max_experiments=30)
    assert code == 0
    journal = runs / "sim" / "events.jsonl"
    whole = journal.read_bytes()
    lines = whole.splitlines(keepends=True)

    journal.unlink()                                             # deleted: the key says it held events
    _refused(sim, runs, simgit, "events.jsonl is missing, but the run's key .journal.key shows that it recorded "
                                "events", max_experiments=40)
    assert not journal.exists()

    journal.write_bytes(b"".join(lines[:-3]))                    # the last lines cut off: run.json counted them
    _refused(sim, runs, simgit, f"holds {len(lines) - 3} events but run.json counted {len(lines)}",
             max_experiments=40)

    cut = next(i for i, e in enumerate(events) if e["type"] == "experiment_finished" and e["id"] == 20)
    journal.write_bytes(b"".join(lines[:cut]))                   # ... with run.json's count lost too:
    meta = json.loads((runs / "sim" / "run.json").read_text())   # lineage.parquet holds what the journal lost
    meta["journal_events"] = cut
    (runs / "sim" / "run.json").write_text(json.dumps(meta))
    _refused(sim, runs, simgit, "lineage.parquet holds experiment 20 .*which the journal .* lacks", max_experiments=40)

    (runs / "sim" / "lineage.parquet").unlink()                  # and without the tables: the branches tell
    (runs / "sim" / "results.tsv").unlink()
    meta["champion_id"] = None
    (runs / "sim" / "run.json").write_text(json.dumps(meta))
    _refused(sim, runs, simgit, "branch population/sim/m00.. holds a member that the journal .* never started",
             max_experiments=40)

    journal.write_bytes(whole)                                    # restored: the run goes on
    code, driver, _, resumed = run(sim, runs, simgit=simgit, resume=True, max_experiments=40)
    assert code == 0 and sum(e["type"] == "experiment_finished" for e in resumed) == 40


def test_a_new_run_under_a_tag_whose_branches_remain_refuses(tmp_path):
    sim = small()
    code, _, simgit, _ = run(sim, tmp_path / "runs", max_experiments=10)
    assert code == 0
    __import__("shutil").rmtree(tmp_path / "runs" / "sim")       # the store deleted by hand, the branches left
    from population.fleet import DriverError
    driver, _ = simulate.make_driver(sim, tmp_path / "runs", simgit=simgit, max_experiments=10)
    with simulate.patched_store(sim), pytest.raises(DriverError, match="branch population/sim/m0000 already exists"
                                                                       ".*python -m population clean sim --all --yes"):
        driver.run()
    assert not (tmp_path / "runs" / "sim").exists()                # a failed start leaves nothing behind


def test_a_plain_resume_keeps_every_setting_and_a_contradicting_flag_points_at_set(tmp_path):
    from population.config import ConfigError

    sim = small(selection="margin")
    runs = tmp_path / "runs"
    code, _, simgit, _ = run(sim, runs, max_experiments=20, promotion_z=2.0, confirm_runs=2)
    assert code == 0
    # a plain resume: no settings given (the workers, the population size at their defaults)
    code, driver, _, _ = run(sim, runs, simgit=simgit, resume=True, max_experiments=24, workers=None,
                             population_size=16, selection="posterior", seed=42)
    assert code == 0
    cfg, settings = driver.config, driver.policy.settings
    assert (cfg.workers, cfg.population_size, cfg.selection, cfg.promotion_z, cfg.seed) == (4, 6, "margin", 2.0, 0)
    assert (settings.workers, settings.population_size, settings.selection) == (4, 6, "margin")
    meta = json.loads((runs / "sim" / "run.json").read_text())
    assert meta["settings"]["population_size"] == 6 and meta["settings"]["selection"] == "margin"
    assert meta["settings_history"] == []
    # a flag that contradicts the run (given on the command line) is refused, pointing at --set
    for flag, value, hint in [("population_size", 4, "--set population-size=4"),
                              ("selection", "posterior", "--set selection=posterior"),
                              ("workers", 1, "--set workers=1")]:
        driver, _ = simulate.make_driver(sim, runs, simgit=simgit, resume=True, max_experiments=30,
                                         explicit=frozenset({flag}), **{flag: value})
        with simulate.patched_store(sim), pytest.raises(ConfigError, match=f"keeps its settings .*{hint}"):
            driver.run()


def test_set_changes_a_setting_from_now_on_and_a_smaller_population_shrinks_one_member_per_result(tmp_path):
    sim = small(population_size=12, crash_rate=0.0, agent_error_rate=0.0)
    runs = tmp_path / "runs"
    code, first, simgit, before = run(sim, runs, max_experiments=40, population_size=12)
    assert code == 0
    living = len(first.state.living())
    assert living >= 8
    code, driver, _, events = run(sim, runs, simgit=simgit, resume=True, max_experiments=80, population_size=12,
                                  set_values={"population_size": 3, "promotion_z": 1.5})
    assert code == 0
    after = events[len(before):]
    change = next(e for e in after if e["type"] == "settings_changed")
    assert change["changes"] == {"population_size": [12, 3], "tournament_size": [12, 3], "promotion_z": [1.0, 1.5]}
    assert driver.policy.settings.population_size == 3 and driver.policy.settings.tournament_size == 3
    # never a mass cull: at most one member beyond the one a result adds, per result
    culls, per_result = 0, []
    for event in after:
        if event["type"] == "member_culled":
            culls += 1
        elif event["type"] == "decided":
            per_result.append(culls)
            culls = 0
    assert per_result and max(per_result) <= 2 and sum(per_result) >= living - 3
    assert len(driver.state.living()) <= 3 + 1                   # shrunk (the champion may be kept on top)
    meta = json.loads((runs / "sim" / "run.json").read_text())
    assert meta["settings"]["population_size"] == 3 and meta["settings"]["promotion_z"] == 1.5
    assert [h["changes"] for h in meta["settings_history"]] == [change["changes"]]
    assert meta["args"]["population_size"] == 12                   # how it started, kept
    # the next plain resume keeps the changed settings
    code, driver, _, _ = run(sim, runs, simgit=simgit, resume=True, max_experiments=82, explicit=frozenset())
    assert code == 0 and driver.config.population_size == 3 and driver.config.promotion_z == 1.5


# ---------------------------------------------------------------- a lost child's own change is trained (issue 29)

def _kill_w1_training_a_child_while_its_agent_works(killed: dict):
    def hook(fleet):
        fleet.spare = 1
        wait = fleet.wait

        def wait_and_kill(timeout):
            done = wait(timeout)
            if killed:
                return done
            slot, driver = fleet.worker("w1"), fleet.workload.sim._driver
            if fleet.clock.t > 150 and slot.train and slot.prep:
                training, preparing = slot.train[4], slot.prep[4]
                kinds = {driver.state.experiments[i].kind for i in (training, preparing)}
                if kinds == {"child"}:
                    killed.update(training=training, preparing=preparing)
                    fleet.kill("w1")
            return done
        fleet.wait = wait_and_kill
    return hook


def test_a_child_lost_after_its_commit_arrived_trains_that_commit_again_and_one_lost_in_its_agent_is_proposed_anew(
        tmp_path):
    killed = {}
    sim = small(crash_rate=0.0, agent_error_rate=0.0)
    code, driver, simgit, events = run(sim, tmp_path / "runs", fleet_hook=_kill_w1_training_a_child_while_its_agent_works(killed))
    assert code == 0 and killed
    lost = {e["id"]: e for e in events if e["type"] == "experiment_lost"}
    started = {e["id"]: e for e in events if e["type"] == "experiment_started"}
    training, preparing = lost[killed["training"]], lost[killed["preparing"]]
    commit = training["commit"]
    assert commit and simgit.refs[f"refs/heads/population/sim/{started[training['id']]['member']}"] == commit
    assert "commit" not in preparing                             # its agent never finished: nothing arrived
    queued = {e["lost"]: e for e in events if e["type"] == "work_queued" and e.get("lost") is not None}
    assert queued[training["id"]]["commit"] == commit and queued[training["id"]]["retrains"] == training["id"]
    assert "that commit trains again under a new id" in queued[training["id"]]["reason"]
    assert "commit" not in queued[preparing["id"]] and queued[preparing["id"]]["parent"] == \
        driver.state.experiments[started[preparing["id"]]["parent_id"]].member
    assert "a new proposal from" in queued[preparing["id"]]["reason"]
    # the same commit, its own change, trained under a new id (a new member), no agent run for it
    again = next(e for e in started.values() if e.get("retrains") == training["id"])
    assert again["kind"] == "child" and again["commit"] == commit and again["id"] > training["id"]
    assert again["parent_id"] == started[training["id"]]["parent_id"] and again["member"] != training.get("member")
    row = next(e["row"] for e in events if e["type"] == "experiment_finished" and e["id"] == again["id"])
    assert row["commit"] == commit and row["status"] == "ok" and row["description"] == training["description"]
    transcript = (tmp_path / "runs" / "sim" / "experiments" / str(again["id"]) / "transcript.txt").read_text()
    assert "no agent ran" in transcript
    lineage = RunStore.open(tmp_path / "runs" / "sim").read_lineage().set_index("id")
    assert lineage.loc[training["id"], "commit"] == commit and lineage.loc[training["id"], "status"] == "lost"
    assert "that commit trains again under a new id" in lineage.loc[training["id"], "reason"]
    assert "a new proposal from" in lineage.loc[preparing["id"], "reason"]


def test_a_child_in_flight_when_the_driver_died_trains_its_commit_again_on_resume(tmp_path, monkeypatch):
    """SIGKILL in process: the driver records nothing at its end (no lost events); on --resume the
    child whose bundle had arrived (its branch holds its commit) trains that commit again."""
    from population.driver import Driver

    sim = small(crash_rate=0.0, agent_error_rate=0.0)
    runs = tmp_path / "runs"

    def stop_while_children_train(fleet):
        wait = fleet.wait

        def wait_then_stop(timeout):
            done = wait(timeout)
            driver = fleet.workload.sim._driver
            if fleet.clock.t > 150 and any(s.train and driver.state.experiments[s.train[4]].kind == "child"
                                           for s in fleet.slots):
                driver.stop_reason = "killed"
            return done
        fleet.wait = wait_then_stop

    with monkeypatch.context() as patch:
        patch.setattr(Driver, "_record_stop", lambda self, finished: None)      # killed: nothing recorded
        code, first, simgit, before = run(sim, runs, max_experiments=40, fleet_hook=stop_while_children_train)
    in_flight = [e for e in first.state.in_flight() if e.kind == "child"]
    arrived = {e.id: simgit.ref_commit(None, f"population/sim/{e.member}") for e in in_flight}
    arrived = {i: c for i, c in arrived.items() if c}
    assert arrived, "no child's commit had arrived when the driver stopped"
    code, driver, _, events = run(sim, runs, simgit=simgit, resume=True, max_experiments=40)
    assert code == 0
    lost = {e["id"]: e for e in events if e["type"] == "experiment_lost"}
    for exp_id, commit in arrived.items():
        assert lost[exp_id]["commit"] == commit
        again = next(e for e in events if e["type"] == "experiment_started" and e.get("retrains") == exp_id)
        assert again["commit"] == commit
        assert next(e["row"]["commit"] for e in events if e["type"] == "experiment_finished"
                    and e["id"] == again["id"]) == commit


# ---------------------------------------------------------------- agents that keep failing the same way (issue 29)

REFUSED = ("request to http://127.0.0.1:9/v1/chat/completions failed: ConnectionError: HTTPConnectionPool(host='127.0.0.1', "
           "port=9): Max retries exceeded with url: /v1/chat/completions (Caused by NewConnectionError(\"HTTPConnection("
           "host='127.0.0.1', port=9): Failed to establish a new connection: [Errno 111] Connection refused\"))")


class DeadEndpoint:
    """The simulated workers, but the agents of `dead` workers fail at once as a dead --agent-base-url does."""

    def __init__(self, workload, dead: set[str]):
        self.workload, self.dead, self.sim = workload, dead, workload.sim

    def prepare(self, worker, job):
        prepared, seconds = self.workload.prepare(worker, job)
        if job.prompt is not None and worker in self.dead:
            prepared.status, prepared.reason, prepared.commit, prepared.bundle = "agent_error", REFUSED, "", None
            seconds = 6.5
        return prepared, seconds

    def train(self, worker, job):
        return self.workload.train(worker, job)


def _with_dead_agents(dead: set[str]):
    def hook(fleet):
        fleet.workload = DeadEndpoint(fleet.workload, dead)
    return hook


def test_an_agent_failing_the_same_way_backs_off_then_stops_its_worker_and_the_run_goes_on(tmp_path):
    import io

    from population.console import Console

    sim = small(workers=2, crash_rate=0.0, agent_error_rate=0.0)
    driver, simgit = simulate.make_driver(sim, tmp_path / "runs", simgit=simulate.SimGit(sim), max_experiments=40)
    _with_dead_agents({"w1"})(driver.fleet)
    out = io.StringIO()
    driver.console = Console(out, clock=driver.clock)
    with simulate.patched_store(sim):
        assert driver.run() == 0
    events = RunStore.open(tmp_path / "runs" / "sim").events()
    started = {e["id"]: e for e in events if e["type"] == "experiment_started"}
    failed = [e for e in events if e["type"] == "experiment_finished" and e["row"]["status"] == "agent_error"]
    assert [started[e["id"]]["worker"] for e in failed] == ["w1"] * 5            # then w1 proposes no more
    assert all(e["row"]["reason"] == REFUSED for e in failed)                      # the whole message, kept
    times = [started[e["id"]]["time"] for e in failed]
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    assert gaps[1] >= 15 + 6.5 and gaps[2] >= 30 + 6.5 and gaps[3] >= 60 + 6.5   # growing pauses
    assert all(started[i]["worker"] == "w0" for i in started if started[i]["time"] > times[-1] and
               started[i]["kind"] == "child")
    assert sum(e["type"] == "experiment_finished" for e in events) == 40          # the run went on with w0
    text = out.getvalue()
    assert "w1's agent failed the same way 2 times in a row" in text and "its next proposal in 15 s" in text
    stop = next(line for line in text.splitlines() if "w1 stopped" in line)
    assert "failed the same way 5 times in a row" in stop and "[Errno 111] Connection refused" in stop
    assert "the run goes on with 1 worker" in stop
    lineage = RunStore.open(tmp_path / "runs" / "sim").read_lineage()
    assert set(lineage[lineage["status"] == "agent_error"]["reason"]) == {REFUSED}


def test_when_every_workers_agent_stops_the_run_ends_in_one_line(tmp_path):
    from population.fleet import DriverError

    sim = small(workers=2, crash_rate=0.0, agent_error_rate=0.0)
    driver, _ = simulate.make_driver(sim, tmp_path / "runs", simgit=simulate.SimGit(sim), max_experiments=40)
    _with_dead_agents({"w0", "w1"})(driver.fleet)
    with simulate.patched_store(sim), pytest.raises(DriverError, match="no worker is left: w0's agent .* failed 5 "
                                                                       "times in a row: .*Connection refused") as end:
        driver.run()
    assert "\n" not in str(end.value) and "then --resume" in str(end.value)
    events = RunStore.open(tmp_path / "runs" / "sim").events()
    assert events[-1]["type"] == "run_state" and events[-1]["state"] == "stopped"
    assert sum(e["type"] == "experiment_finished" and e["row"]["status"] == "agent_error" for e in events) == 10
