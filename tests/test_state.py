import math
import random

import pytest

from population.state import PopulationState, lineage_columns

METRIC = "val_bpb"


def started(exp_id, kind, member, parent_id=None, parent_commit="", t=0.0, seed=1):
    return {"type": "experiment_started", "id": exp_id, "kind": kind, "member": member,
            "parent_id": parent_id, "parent_commit": parent_commit, "worker": f"w{exp_id % 2}",
            "agent": "fake", "seed": seed, "budget_s": 300.0, "time": t}


def finished(exp_id, value, commit, status="ok", **extra):
    row = {"commit": commit, "branch": f"population/t/{commit}", "status": status,
           METRIC: value, "description": f"exp {exp_id}", "finished_at": 100.0 + exp_id, **extra}
    return {"type": "experiment_finished", "id": exp_id, "row": row}


def lost(exp_id, reason="driver killed"):
    return {"type": "experiment_lost", "id": exp_id, "reason": reason, "time": 50.0}


def history():
    """Two baselines, a noise event, two children (one crashes), a re-run, a promotion, a cull."""
    return [
        started(0, "baseline", "m0000"), started(1, "baseline", "m0000"),
        finished(0, 1.000, "c0"), finished(1, 1.002, "c0"),
        {"type": "noise", "std": 0.0014, "time": 1.0},
        {"type": "champion", "member": "m0000", "time": 1.0},
        started(2, "child", "m0001", parent_id=0, parent_commit="c0"),
        started(3, "child", "m0002", parent_id=0, parent_commit="c0"),
        finished(2, 0.990, "c1"),
        finished(3, math.nan, "c2", status="crash", reason="OOM"),
        started(4, "rerun", "m0001", parent_id=2, parent_commit="c1", seed=2),
        finished(4, 0.992, "c1"),
        {"type": "champion", "member": "m0001", "time": 2.0},
        started(5, "child", "m0003", parent_id=2, parent_commit="c1"),
        finished(5, 0.995, "c3"),
        {"type": "member_culled", "member": "m0000", "time": 3.0},
        started(6, "child", "m0004", parent_id=5, parent_commit="c3"),
        {"type": "run_state", "state": "running", "time": 4.0},
    ]


def test_replay_builds_members_runs_and_champion():
    state = PopulationState.replay(history(), METRIC)
    assert state.members["m0000"].runs == [1.000, 1.002]
    assert state.members["m0001"].runs == [0.990, 0.992]
    assert state.members["m0001"].mean == pytest.approx(0.991)
    assert "m0002" not in state.members  # a crash never becomes a member
    assert state.champion == "m0001"
    assert state.noise_std == 0.0014
    assert state.run_state == "running"
    assert [m.name for m in state.living()] == ["m0001", "m0003"]
    assert state.members["m0000"].culled_at == 3.0 and not state.members["m0000"].alive


def test_generation_is_parent_plus_one():
    state = PopulationState.replay(history(), METRIC)
    assert state.members["m0000"].generation == 0
    assert state.members["m0001"].generation == 1
    assert state.members["m0003"].generation == 2
    assert state.experiments[6].generation == 3   # in flight, child of m0003
    assert state.experiments[4].generation == 1   # a re-run has its member's generation
    assert state.members["m0003"].parent == "m0001"


def test_in_flight_and_next_id():
    state = PopulationState.replay(history(), METRIC)
    assert [e.id for e in state.in_flight()] == [6]
    assert state.in_flight_rows()[0]["member"] == "m0004"
    assert state.next_id() == 7
    state.apply(lost(6))
    assert state.in_flight() == []
    assert state.next_id() == 7  # a lost id is never reused


def test_member_names_are_never_reused():
    assert PopulationState(METRIC).next_member() == "m0001"       # the seed is m0000
    state = PopulationState.replay(history(), METRIC)
    assert state.next_member() == "m0005"      # after m0004, in flight
    state.apply(lost(6))
    assert state.next_member() == "m0005"      # nor a lost one's, nor a crashed one's (m0002)
    state.apply(started(7, "rerun", "m0001", parent_id=2, parent_commit="c1"))
    assert state.next_member() == "m0005"


def test_duplicate_finished_event_is_ignored_with_a_warning():
    events = history() + [finished(2, 0.5, "c1")]
    state = PopulationState.replay(events, METRIC)
    assert state.members["m0001"].runs == [0.990, 0.992]
    assert any("already finished" in w for w in state.warnings)


def test_lost_experiments_never_count():
    events = history() + [lost(6), finished(6, 0.5, "c4")]
    state = PopulationState.replay(events, METRIC)
    assert "m0004" not in state.members
    assert state.in_flight() == []
    assert any("already lost" in w for w in state.warnings)
    rows = {r["id"]: r for r in state.lineage_rows()}
    assert rows[6]["status"] == "lost" and rows[6]["reason"] == "driver killed"


def test_replay_equals_live_application_at_every_prefix():
    events = history() + [lost(6), started(7, "child", "m0004", parent_id=5, parent_commit="c3"),
                          finished(7, 0.98, "c4"), finished(7, 0.1, "c4")]
    live = PopulationState(METRIC)
    for i, event in enumerate(events, start=1):
        live.apply(event)
        replayed = PopulationState.replay(events[:i], METRIC)
        assert _comparable(replayed.lineage_rows()) == _comparable(live.lineage_rows())
        assert replayed.champion == live.champion
        assert [e.id for e in replayed.in_flight()] == [e.id for e in live.in_flight()]
        assert replayed.candidates() == live.candidates()


def _comparable(rows):
    """NaN != NaN, so compare rows with NaN spelled out."""
    return [{k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]


def test_random_interleavings_replay_identically():
    rng = random.Random(0)
    for _ in range(20):
        events, next_id, members = [], 0, ["m0000"]
        events.append(started(0, "baseline", "m0000"))
        events.append(finished(0, 1.0, "c0"))
        next_id = 1
        open_ids = []
        for _ in range(40):
            roll = rng.random()
            if roll < 0.4:
                name = f"m{next_id:04d}"
                events.append(started(next_id, "child", name, parent_id=0, parent_commit="c0"))
                open_ids.append((next_id, name))
                next_id += 1
            elif open_ids:
                exp_id, name = open_ids.pop(rng.randrange(len(open_ids)))
                if roll < 0.85:
                    events.append(finished(exp_id, 1.0 - rng.random() / 100, f"c{exp_id}"))
                    members.append(name)
                else:
                    events.append(lost(exp_id))
                if rng.random() < 0.2:  # a duplicate delivery
                    events.append(finished(exp_id, 0.0, f"c{exp_id}"))
        state = PopulationState.replay(events, METRIC)
        assert sorted(state.members) == sorted(members)
        assert all(len(m.runs) == 1 for m in state.members.values())
        assert sorted(e.id for e in state.in_flight()) == sorted(i for i, _ in open_ids)


def test_lineage_rows_have_exactly_the_documented_columns():
    state = PopulationState.replay(history(), METRIC)
    rows = state.lineage_rows()
    assert [r["id"] for r in rows] == [0, 1, 2, 3, 4, 5]  # finished/lost only, not in flight
    names = [name for name, _ in lineage_columns(METRIC)]
    assert all(list(r) == names for r in rows)
    by_id = {r["id"]: r for r in rows}
    assert by_id[2]["metric_mean"] == pytest.approx(0.991)
    assert by_id[4]["metric_mean"] == pytest.approx(0.991) and by_id[4]["kind"] == "rerun"
    assert by_id[2]["champion"] and by_id[4]["champion"] and not by_id[5]["champion"]
    assert not by_id[0]["alive"] and by_id[0]["culled_at"] == 3.0
    assert by_id[3]["status"] == "crash" and by_id[3]["reason"] == "OOM"
    assert math.isnan(by_id[3]["metric_mean"]) and not by_id[3]["alive"]
    assert by_id[5]["generation"] == 2 and by_id[5]["parent_id"] == 2
    assert by_id[5]["started_at"] == 0.0 and by_id[5]["finished_at"] == 105.0
    assert by_id[2]["worker"] == "w0" and by_id[2]["seed"] == 1 and by_id[4]["seed"] == 2
    assert math.isnan(by_id[2]["peak_vram_mb"]) and by_id[2]["agent_tokens"] is None


def test_candidates_orient_a_higher_is_better_metric():
    events = [started(0, "baseline", "m0000"), finished(0, 0.5, "c0"),
              started(1, "child", "m0001", parent_id=0), finished(1, 0.7, "c1")]
    state = PopulationState.replay(events, METRIC, lower_is_better=False)
    assert state.best_member() == "m0001"
    assert state.score("m0001") == -0.7
    assert PopulationState.replay(events, METRIC).best_member() == "m0000"


def test_the_lineage_posterior_follows_the_journal():
    """A node per started child, a run per ok result; failed and lost children leave; culled
    members are folded away; the estimates pool a child's runs with its parent's."""
    state = PopulationState.replay(history(), METRIC)
    posterior = state.posterior
    assert "m0002" not in posterior                      # crashed: never a member
    assert "m0000" not in posterior                      # culled, and folded into its descendants
    assert {"m0001", "m0003", "m0004"} <= set(posterior._nodes)
    assert posterior.evidence("m0001") == 3              # its two runs and its child's
    assert state.estimate("m0003") == posterior.mean("m0003")
    assert posterior.mean("m0004") == math.inf             # still training: no estimate of its own yet
    assert math.isfinite(state.estimate("m0001"))
    # the same events without the noise: no posterior yet, estimates fall back to the means
    early = PopulationState.replay([e for e in history() if e["type"] != "noise"], METRIC)
    assert early.estimate("m0001") == early.score("m0001") == pytest.approx(0.991)
    assert early.candidates(estimated=True) == early.candidates()
    lost_child = PopulationState.replay(history() + [lost(6)], METRIC)
    assert "m0004" not in lost_child.posterior


def test_members_awaiting_confirmation_are_the_promising_parents_of_children_in_flight():
    events = [started(0, "baseline", "m0000"), finished(0, 1.0, "c0"), started(1, "baseline", "m0000"),
              finished(1, 1.0004, "c0"), {"type": "noise", "std": 0.0004, "time": 1.0},
              {"type": "champion", "member": "m0000", "time": 1.0},
              started(2, "child", "m0001", parent_id=0), finished(2, 0.995, "c1"),     # better
              started(3, "child", "m0002", parent_id=0), finished(3, 1.004, "c2"),     # worse
              started(4, "child", "m0003", parent_id=2), started(5, "child", "m0004", parent_id=3)]
    state = PopulationState.replay(events, METRIC)
    assert state.awaiting_confirmation(2) == {"m0001"}   # not m0002 (worse), not m0000 (champion)
    assert state.awaiting_confirmation(1) == set()       # one run is enough backing
    state.apply(finished(4, 0.995, "c3"))
    assert state.awaiting_confirmation(2) == set()       # its child's result came back


def test_unknown_and_inconsistent_events_warn_without_crashing():
    events = [{"type": "mystery"}, finished(9, 1.0, "c"), lost(9),
              {"type": "member_culled", "member": "nobody", "time": 1.0},
              {"type": "champion", "member": "nobody", "time": 1.0},
              started(0, "baseline", "m0000"), started(0, "baseline", "m0000"),
              started(1, "rerun", "m0009", parent_id=0), finished(1, 1.0, "c")]
    state = PopulationState.replay(events, METRIC)
    assert len(state.warnings) == 7
    assert state.members == {} and state.champion is None


def test_rerun_of_another_commit_does_not_count():
    events = [started(0, "baseline", "m0000"), finished(0, 1.0, "c0"),
              started(1, "rerun", "m0000", parent_id=0), finished(1, 0.1, "other")]
    state = PopulationState.replay(events, METRIC)
    assert state.members["m0000"].runs == [1.0]
    assert state.warnings


def test_malformed_events_warn_and_leave_the_state_untouched():
    state = PopulationState.replay([started(0, "baseline", "m0000"), finished(0, 1.0, "c0")], METRIC)
    state.apply({"type": "experiment_started", "id": 1})            # no kind, no member
    state.apply({"type": "experiment_finished", "id": "x", "row": {}})
    state.apply({"type": "noise"})
    assert len(state.warnings) == 3 and all("malformed" in w for w in state.warnings)
    assert list(state.experiments) == [0] and state.noise_std is None
