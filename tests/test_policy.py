"""The population policy (population/policy.py) fed events, its decisions checked: no Ray, no git,
no files; each test takes milliseconds. The noise phase, promotion, confirmation, re-runs, culling,
lost work (node loss) and resuming from a journal."""
from __future__ import annotations

import random
import statistics

import pytest

from population.policy import (MAX_ATTEMPTS, SEED_MEMBER, Cull, Decided, Drop, Lose, NoiseMeasured, Policy, Promote,
                               Queue, Settings, Stop, Train, Work)
from population.state import PopulationState


class Run:
    """A journal, the state rebuilt from it, and the policy: what the driver does, minus the I/O."""

    def __init__(self, **settings):
        self.state = PopulationState("val_bpb")
        self.policy = Policy(Settings(**settings), random.Random(0))
        self.journal: list[dict] = []
        self.members = 0

    def record(self, event: dict) -> None:
        self.journal.append(event)
        self.state.apply(event)

    def decide(self, decisions) -> list:
        made = []
        for decision in decisions:
            self.record(decision.event())
            made.append(decision)
        return made

    def start(self) -> list:
        return self.decide(self.policy.on_start(self.state))

    def hand_out(self) -> int:
        train = self.policy.next_work(self.state)
        assert isinstance(train, Train)
        work, exp_id = train.work, self.state.next_id()
        if work.kind == "child":
            self.members += 1
            member, parent_id = f"m{self.members:04d}", self.state.first_id(work.parent)
        else:
            member, parent_id = work.member, self.state.origin(work.member)[1]
        self.record(train.started(exp_id, member, parent_id))
        return exp_id

    def finish(self, exp_id: int, value: float | None, status: str = "ok") -> list:
        exp = self.state.experiments[exp_id]
        member = self.state.members.get(exp.member)
        commit = "seed" if exp.kind == "baseline" else member.commit if member else f"c{exp_id}"
        self.record({"type": "experiment_finished", "id": exp_id,
                     "row": {"status": status, "val_bpb": value if status == "ok" else None, "commit": commit}})
        return self.decide(self.policy.on_result(self.state, exp_id))

    def lose(self, exp_id: int) -> list:
        self.record({"type": "experiment_lost", "id": exp_id, "reason": "node died"})
        return self.decide(self.policy.on_lost(self.state, exp_id))

    def resumed(self, **settings) -> "Run":
        """A new driver on the same journal (PopulationState.replay), after its decisions on resume."""
        again = Run(**settings)
        again.journal = list(self.journal)
        again.state = PopulationState.replay(self.journal, "val_bpb")
        again.members = self.members
        again.resume_decisions = again.decide(again.policy.on_resume(again.state))
        return again


def kinds(decisions) -> list[str]:
    return [type(d).__name__ for d in decisions]


def noise_done(run: Run, values=(1.0, 1.0004, 0.9996)) -> list:
    """The noise phase with one baseline per value, nothing else in flight."""
    run.start()
    ids = [run.hand_out() for _ in values]
    decisions = []
    for exp_id, value in zip(ids, values):
        decisions = run.finish(exp_id, value)
    return decisions


# ---------------------------------------------------------------- the noise phase

def test_a_run_starts_with_its_baselines_queued_in_seed_order_and_hands_them_out_first():
    run = Run(noise_runs=3, workers=4)
    assert kinds(run.start()) == ["Queue"] * 3
    handed = [run.policy.next_work(run.state) for _ in range(1)]
    assert handed[0].work.kind == "baseline" and handed[0].work_id is not None
    ids = [run.hand_out() for _ in range(4)]
    started = [run.state.experiments[i].started for i in ids]
    assert [s["kind"] for s in started] == ["baseline", "baseline", "baseline", "child"]
    assert [s["seed"] for s in started[:3]] == [42, 43, 44]
    assert started[3]["parent_id"] == 0           # a child of the seed while the noise is unknown
    assert not run.state.pending


def test_the_noise_phase_ends_with_the_measured_spread_the_seed_as_champion_and_waiting_children_judged():
    run = Run(noise_runs=3, workers=5, selection="margin", confirm_runs=1)
    run.start()
    baselines = [run.hand_out() for _ in range(3)]
    better, worse = run.hand_out(), run.hand_out()
    assert kinds(run.finish(better, 0.990)) == ["Decided"]     # its verdict waits for the noise
    assert kinds(run.finish(worse, 1.010)) == ["Decided"]
    assert kinds(run.finish(baselines[0], 1.0)) == ["Decided"]
    assert kinds(run.finish(baselines[1], 1.0004)) == ["Decided"]
    decisions = run.finish(baselines[2], 0.9996)
    assert kinds(decisions) == ["NoiseMeasured", "Promote", "Promote", "Decided"]
    noise = decisions[0]
    assert noise.std == pytest.approx(statistics.stdev([1.0, 1.0004, 0.9996]))
    assert (noise.runs, noise.commits) == (3, 1)
    assert decisions[1].member == SEED_MEMBER and decisions[2].member == run.state.experiments[better].member
    assert run.state.noise_std == pytest.approx(noise.std)


def test_one_worker_measures_the_noise_too_a_second_baseline_when_the_first_was_alone():
    run = Run(workers=1, noise_runs=1)
    run.start()
    first = run.hand_out()
    child = run.hand_out()                         # prepared while the baseline trains
    decisions = run.finish(first, 1.0)
    assert kinds(decisions) == ["Queue", "Decided"]           # no constant stands in for the noise
    assert decisions[0].work.kind == "baseline" and decisions[0].front and decisions[0].work.seed == 43
    assert run.state.noise_std is None
    run.finish(child, 0.999)
    second = run.hand_out()
    assert run.state.experiments[second].kind == "baseline"
    # the child is judged once the noise is known: one training behind it, it waits for its own child
    assert kinds(run.finish(second, 1.0006)) == ["NoiseMeasured", "Promote", "Decided"]
    assert run.state.noise_std == pytest.approx(statistics.stdev([1.0, 1.0006]))


def test_the_default_noise_runs_measure_the_noise_with_one_worker():
    assert Settings(workers=1).resolved().noise_runs == Settings(workers=8).resolved().noise_runs == 3


def test_a_seed_that_fails_every_baseline_stops_the_run():
    run = Run(noise_runs=2, workers=2)
    run.start()
    ids = [run.hand_out(), run.hand_out()]
    assert kinds(run.finish(ids[0], None, "crash")) == ["Decided"]
    decisions = run.finish(ids[1], None, "timeout")
    assert kinds(decisions) == ["Stop"] and "failed in every baseline run" in decisions[0].reason


def test_the_noise_is_refined_from_every_commit_trained_more_than_once():
    run = Run(noise_runs=2, workers=1, selection="margin", confirm_runs=2, max_runs=2)
    noise_done(run, (1.0, 1.0004))
    first = run.state.noise_std
    child = run.hand_out()
    decisions = run.finish(child, 0.995)            # past the margin on one run: a confirming re-run
    assert kinds(decisions) == ["Queue", "Decided"] and decisions[0].work.kind == "rerun"
    rerun = run.hand_out()
    decisions = run.finish(rerun, 0.9990)
    assert kinds(decisions)[0] == "NoiseMeasured"
    pooled = (statistics.variance([1.0, 1.0004]) + statistics.variance([0.995, 0.999])) / 2
    assert decisions[0].std == pytest.approx(pooled ** 0.5)
    assert decisions[0].previous == pytest.approx(first) and decisions[0].commits == 2


# ---------------------------------------------------------------- promotion and confirmation

def test_posterior_promotes_a_better_child_once_its_own_child_backs_it():
    run = Run(noise_runs=3, workers=1, promotion_runs=1)     # confirm_runs 2, confidence 0.9, no re-run
    noise_done(run)
    child = run.hand_out()
    assert kinds(run.finish(child, 0.990)) == ["Decided"]          # one training behind it: it waits
    grandchild = run.hand_out()
    assert run.state.experiments[grandchild].parent_id == child     # bred from the best estimate
    decisions = run.finish(grandchild, 0.9905)
    assert kinds(decisions) == ["Promote", "Decided"]
    assert decisions[0].member == run.state.experiments[child].member and decisions[0].previous == SEED_MEMBER


def test_posterior_confirms_a_member_with_one_run_of_its_own_by_a_rerun_before_promoting_it():
    run = Run(noise_runs=3, workers=1)               # the defaults: promotion_runs 2
    noise_done(run)
    child = run.hand_out()
    member = run.state.experiments[child].member
    assert kinds(run.finish(child, 0.990)) == ["Decided"]
    grandchild = run.hand_out()
    decisions = run.finish(grandchild, 0.9905)      # the posterior would promote it: re-run first
    assert kinds(decisions) == ["Queue", "Decided"]
    assert decisions[0].work == Work("rerun", member, seed=43) and "1 run of its own" in decisions[0].reason
    rerun = run.hand_out()                           # the queue first: the re-run, on another seed
    assert run.state.experiments[rerun].kind == "rerun" and run.state.experiments[rerun].member == member
    decisions = run.finish(rerun, 0.9902)
    assert kinds(decisions) == ["NoiseMeasured", "Promote", "Decided"]   # its own two runs refine the noise
    assert decisions[1].member == member and decisions[1].previous == SEED_MEMBER


def test_posterior_keeps_the_champion_when_the_confirming_rerun_falls_back_and_queues_each_rerun_once():
    run = Run(noise_runs=3, workers=1, population_size=3)
    noise_done(run)
    child = run.hand_out()
    member = run.state.experiments[child].member
    run.finish(child, 0.998)
    grandchild = run.hand_out()
    assert kinds(run.finish(grandchild, 0.998)) == ["Queue", "Decided"]
    assert list(run.policy._judge(run.state, member)) == []        # its re-run is queued already
    rerun = run.hand_out()
    other = run.hand_out()                          # a child trains beside the re-run's turn
    decisions = run.finish(other, 1.02)             # over the size: the member awaiting its re-run is kept
    culled = [d.member for d in decisions if isinstance(d, Cull)]
    assert len(culled) == 1 and member not in culled and run.state.members[member].alive
    decisions = run.finish(rerun, 1.0004)           # the lucky first run does not repeat
    assert not any(isinstance(d, Promote) and d.member == member for d in decisions)
    assert run.state.champion == SEED_MEMBER


def test_posterior_promotes_without_a_rerun_once_no_training_is_left():
    run = Run(noise_runs=3, workers=1, max_experiments=5, endgame=0)      # the endgame would re-run the child
    noise_done(run)
    child = run.hand_out()
    run.finish(child, 0.990)
    grandchild = run.hand_out()                     # the fifth and last training
    decisions = run.finish(grandchild, 0.9905)      # a re-run could not be trained: decided as it stands
    assert kinds(decisions) == ["Promote", "Decided"] and decisions[0].member == run.state.experiments[child].member
    assert run.policy.next_work(run.state) is None


def test_margin_confirms_a_first_run_past_the_margin_with_a_rerun_on_another_seed():
    run = Run(noise_runs=3, workers=1, selection="margin")
    noise_done(run)
    child = run.hand_out()
    decisions = run.finish(child, 0.990)
    assert kinds(decisions) == ["Queue", "Decided"]
    assert decisions[0].work.kind == "rerun" and decisions[0].work.seed == 43
    assert "past the noise margin on 1 of 2 runs" in decisions[0].reason
    rerun = run.hand_out()
    assert run.state.experiments[rerun].kind == "rerun"
    decisions = run.finish(rerun, 0.9902)
    assert kinds(decisions) == ["NoiseMeasured", "Promote", "Decided"]


def test_margin_keeps_a_worse_child_without_a_rerun_and_queues_each_rerun_once():
    run = Run(noise_runs=3, workers=1, selection="margin")
    noise_done(run)
    worse = run.hand_out()
    assert kinds(run.finish(worse, 1.01)) == ["Decided"]
    child = run.hand_out()
    run.finish(child, 0.990)
    assert list(run.policy._judge(run.state, run.state.experiments[child].member)) == []   # queued already


# ---------------------------------------------------------------- the endgame

def run_into_the_endgame(step: float, limit: int = 20, endgame: float = 0.25) -> tuple[Run, list]:
    """One worker, the noise 0.0004, children whose first runs land `step` apart (alternating up
    and down around the seed, so none is promoted) until the endgame's window opens; the
    decisions of the result that opened it."""
    run = Run(noise_runs=3, workers=1, max_experiments=limit, endgame=endgame)
    noise_done(run)
    window = round(endgame * limit)
    sign = 1
    while True:
        decisions = run.finish(run.hand_out(), 1.0 + sign * step * (1 + run.state.counted() % 3) / 2)
        sign = -sign
        if limit - run.state.counted() <= window:
            return run, decisions


def test_the_endgame_re_runs_the_best_members_where_the_edits_hide_in_the_noise():
    """Edits inside the noise: as the last quarter opens the gate is on, and every training left
    re-runs the best living member instead of making a child; at the end the likelier best is
    champion."""
    run, decisions = run_into_the_endgame(step=0.0003)
    gate = next(d for d in decisions if type(d).__name__ == "Endgame")
    assert gate.on and gate.window == 5 and gate.spread < 3
    assert run.state.endgame == {"on": True, "max_experiments": 20}
    window = []
    while run.policy.next_work(run.state) is not None:
        exp_id = run.hand_out()
        window.append(run.state.experiments[exp_id].kind)
        decisions = run.finish(exp_id, 1.0 - 0.0001 * len(window))
    assert window == ["rerun"] * 5
    assert "Endgame" not in kinds(decisions)                       # decided once
    likeliest = min(run.state.living(), key=lambda m: run.state.estimate(m.name)).name
    assert run.state.champion == likeliest


def test_the_endgame_stays_off_where_the_edits_stand_out():
    """Edits of many noise stds: the best stand out on one run, so the window's trainings stay
    children, and the champion is left as the promotion rule made it."""
    run, decisions = run_into_the_endgame(step=0.01)
    gate = next(d for d in decisions if type(d).__name__ == "Endgame")
    assert not gate.on and gate.spread > 3
    kinds_in_window = []
    while run.policy.next_work(run.state) is not None:
        exp_id = run.hand_out()
        kinds_in_window.append(run.state.experiments[exp_id].kind)
        decisions = run.finish(exp_id, 1.02)
    assert kinds_in_window == ["child"] * 5 and "Promote" not in kinds(decisions)


def test_the_endgame_is_off_without_a_known_end_or_with_share_0():
    for settings in ({"max_experiments": None}, {"max_experiments": 20, "endgame": 0}):
        run = Run(noise_runs=3, workers=1, **settings)
        noise_done(run)
        made = []
        for _ in range(16):
            made += run.finish(run.hand_out(), 1.0003)
        assert "Endgame" not in kinds(made) and run.state.endgame is None


def test_a_resumed_run_keeps_the_journaled_gate_and_decides_again_for_a_new_limit():
    run, _ = run_into_the_endgame(step=0.0003)
    again = run.resumed(noise_runs=3, workers=1, max_experiments=20, endgame=0.25)
    assert again.state.endgame == {"on": True, "max_experiments": 20}
    assert "Endgame" not in kinds(again.finish(again.hand_out(), 1.0))
    longer = run.resumed(noise_runs=3, workers=1, max_experiments=40, endgame=0.25)
    made = []
    while longer.state.counted() < 30:               # the window of 40 opens at 30
        made += longer.finish(longer.hand_out(), 1.0002)
    assert kinds(made).count("Endgame") == 1 and longer.state.endgame["max_experiments"] == 40


# ---------------------------------------------------------------- culling

def test_culls_start_once_the_noise_is_known_and_spare_the_champion():
    run = Run(noise_runs=2, workers=6, population_size=2, selection="margin")
    run.start()
    ids = [run.hand_out() for _ in range(6)]
    for exp_id, value in zip(ids[2:], (1.01, 1.02, 1.03, 1.04)):
        assert kinds(run.finish(exp_id, value)) == ["Decided"]      # no cull before the noise: the seed is at stake
    run.finish(ids[0], 1.0)
    decisions = run.finish(ids[1], 1.0004)
    culls = [d.member for d in decisions if isinstance(d, Cull)]
    assert kinds(decisions)[:2] == ["NoiseMeasured", "Promote"] and len(culls) == 3
    assert SEED_MEMBER not in culls and culls == ["m0001", "m0002", "m0003"]     # the oldest, by age
    assert {m.name for m in run.state.living()} == {SEED_MEMBER, "m0004"}


def test_a_member_awaiting_its_rerun_is_not_culled_and_is_culled_right_after_its_rerun():
    run = Run(noise_runs=2, workers=1, population_size=1, selection="margin")
    noise_done(run, (1.0, 1.0004))
    hopeful = run.hand_out()
    decisions = run.finish(hopeful, 0.995)          # past the margin: its re-run is queued, the member kept
    assert kinds(decisions) == ["Queue", "Decided"]
    rerun = run.hand_out()
    assert run.state.experiments[rerun].kind == "rerun"
    child = run.hand_out()
    assert kinds(run.finish(child, 1.01)) == ["Cull", "Decided"]     # the newer child goes, not the hopeful
    decisions = run.finish(rerun, 1.02)             # not confirmed: the population is over its size at once
    assert [d.member for d in decisions if isinstance(d, Cull)] == [run.state.experiments[hopeful].member]


# ---------------------------------------------------------------- lost work, node loss

def test_lost_work_goes_to_the_front_a_child_keeps_its_parent_and_is_given_up_after_max_attempts():
    run = Run(noise_runs=2, workers=3)
    noise_done(run, (1.0, 1.0004))
    child = run.hand_out()
    parent = run.state.experiments[run.state.experiments[child].parent_id].member
    decisions = run.lose(child)
    assert kinds(decisions) == ["Queue"] and decisions[0].front and decisions[0].work.parent == parent
    assert decisions[0].work.attempts == 1
    for attempt in range(2, MAX_ATTEMPTS + 1):
        again = run.hand_out()
        assert run.state.experiments[again].started["attempts"] == attempt - 1
        decisions = run.lose(again)
    assert kinds(decisions) == ["Drop"] and not run.state.pending


def test_a_child_lost_after_its_commit_arrived_trains_that_commit_again_and_one_lost_before_is_a_new_proposal():
    run = Run(noise_runs=2, workers=3)
    noise_done(run, (1.0, 1.0004))
    arrived, in_agent = run.hand_out(), run.hand_out()
    run.record({"type": "experiment_lost", "id": arrived, "reason": "node died", "commit": "c" * 40,
                "description": "raise LR"})
    queued = run.decide(run.policy.on_lost(run.state, arrived))[0]
    assert queued.work.commit == "c" * 40 and queued.work.retrains == arrived and queued.lost == arrived
    assert queued.work.parent == SEED_MEMBER and "that commit trains again under a new id" in queued.reason
    assert queued.event()["commit"] == "c" * 40 and queued.event()["lost"] == arrived
    queued = run.lose(in_agent)[0]
    assert queued.work.commit is None and queued.work.parent == SEED_MEMBER
    assert "before its commit reached the driver: a new proposal from m0000" in queued.reason
    assert "commit" not in queued.event() and "retrains" not in queued.event()
    rows = {row["id"]: row for row in run.state.lineage_rows()}
    assert rows[arrived]["commit"] == "c" * 40 and rows[arrived]["description"] == "raise LR"
    assert rows[arrived]["reason"].startswith("node died; e") and "a new proposal" in rows[in_agent]["reason"]
    # handed out (each at the front): the new proposal, then the lost child's commit, of the same parent
    assert run.policy.next_work(run.state).work.commit is None
    run.hand_out()
    train = run.policy.next_work(run.state)
    assert train.work.commit == "c" * 40 and train.work.parent == SEED_MEMBER
    started = train.started(run.state.next_id(), "m0009", run.state.first_id(SEED_MEMBER))
    assert started["commit"] == "c" * 40 and started["retrains"] == arrived
    # on resume, the children whose commit had arrived (their branch holds it) are told by the driver
    child = run.hand_out()
    resumed = Run(noise_runs=2, workers=3)
    resumed.journal, resumed.state = list(run.journal), PopulationState.replay(run.journal, "val_bpb")
    decisions = resumed.decide(resumed.policy.on_resume(resumed.state, commits={child: "d" * 40}))
    lose = next(d for d in decisions if isinstance(d, Lose) and d.exp_id == child)
    assert lose.event()["commit"] == "d" * 40
    assert next(d for d in decisions if isinstance(d, Queue) and d.lost == child).work.commit == "d" * 40


def test_a_smaller_population_size_shrinks_one_member_per_result_never_in_one_cull():
    run = Run(noise_runs=2, workers=1, population_size=8, selection="margin")
    noise_done(run, (1.0, 1.0004))
    for value in (1.01, 1.02, 1.03, 1.04, 1.05, 1.06, 1.07):
        run.finish(run.hand_out(), value)
    assert len(run.state.living()) == 8
    run.record({"type": "settings_changed", "changes": {"population_size": [8, 3]}})      # --resume --set
    assert run.state.population_floor == 8 and run.state.settings_changes[0]["changes"] == {"population_size": [8, 3]}
    shrinking = run.resumed(noise_runs=2, workers=1, population_size=3, selection="margin")
    assert shrinking.resume_decisions == []                       # no mass cull on resume
    sizes = []
    for value in (1.08, 1.09, 1.10, 1.11, 1.12, 1.13, 1.14):
        shrinking.finish(shrinking.hand_out(), value)
        sizes.append(len(shrinking.state.living()))
    assert sizes == [7, 6, 5, 4, 3, 3, 3] and shrinking.state.population_floor is None


def test_a_node_lost_with_three_trainings_queues_each_again_and_a_lost_baseline_stays_in_the_noise_phase():
    run = Run(noise_runs=3, workers=3)
    run.start()
    ids = [run.hand_out() for _ in range(3)]
    for exp_id in ids[:2]:
        run.lose(exp_id)
    assert [w["kind"] for w in run.state.pending.values()] == ["baseline", "baseline"]
    run.finish(ids[2], 1.0)
    assert run.state.noise_std is None              # two baselines still to come
    again = [run.hand_out(), run.hand_out()]
    run.finish(again[0], 1.0004)
    assert kinds(run.finish(again[1], 0.9996))[:2] == ["NoiseMeasured", "Promote"]


# ---------------------------------------------------------------- resume

def test_resume_loses_what_was_in_flight_and_queues_it_again_in_id_order():
    run = Run(noise_runs=2, workers=3)
    noise_done(run, (1.0, 1.0004))
    children = [run.hand_out() for _ in range(2)]
    again = run.resumed(noise_runs=2, workers=3)
    assert kinds(again.resume_decisions) == ["Lose", "Queue", "Lose", "Queue"]
    assert [d.exp_id for d in again.resume_decisions if isinstance(d, Lose)] == children
    assert [w["kind"] for w in again.state.pending.values()] == ["child", "child"]
    assert again.policy.next_work(again.state).work_id == next(iter(again.state.pending))


def test_a_result_recorded_before_its_decisions_is_judged_on_resume_and_only_that_one():
    run = Run(noise_runs=3, workers=1, selection="margin")
    noise_done(run)
    child = run.hand_out()
    run.record({"type": "experiment_finished", "id": child,            # the driver died right here
                "row": {"status": "ok", "val_bpb": 0.990, "commit": f"c{child}"}})
    again = run.resumed(noise_runs=3, workers=1, selection="margin")
    assert kinds(again.resume_decisions) == ["Queue", "Decided"]       # its confirming re-run
    assert again.state.undecided() == []
    assert kinds(again.resumed(noise_runs=3, workers=1, selection="margin").resume_decisions) == []


def test_a_queued_rerun_survives_a_restart_without_being_derived_again():
    run = Run(noise_runs=3, workers=1, selection="margin")
    noise_done(run)
    run.finish(run.hand_out(), 0.990)
    again = run.resumed(noise_runs=3, workers=1, selection="margin")
    assert again.resume_decisions == []
    assert [w["kind"] for w in again.state.pending.values()] == ["rerun"]
    assert again.state.pending == run.state.pending


def test_a_journal_from_before_the_markers_judges_the_results_after_its_last_decision():
    run = Run(noise_runs=3, workers=1, selection="margin")
    noise_done(run)
    child = run.hand_out()
    run.finish(child, 0.990)
    legacy = [e for e in run.journal if e["type"] not in ("decided", "work_queued")]
    for event in legacy:
        event.pop("work", None)
    again = Run(noise_runs=3, workers=1, selection="margin")
    again.journal, again.state = legacy, PopulationState.replay(legacy, "val_bpb")
    assert again.state.undecided() == [child] and not again.state.warnings
    assert kinds(again.decide(again.policy.on_resume(again.state))) == ["Queue", "Decided"]


def test_a_run_killed_between_the_noise_and_the_champion_promotes_the_seed_on_resume():
    run = Run(noise_runs=2, workers=2)
    run.start()
    ids = [run.hand_out(), run.hand_out()]
    run.finish(ids[0], 1.0)
    run.record({"type": "experiment_finished", "id": ids[1], "row": {"status": "ok", "val_bpb": 1.0004,
                                                                      "commit": "seed"}})
    run.decide([next(run.policy.on_result(run.state, ids[1]))])        # the noise, then the kill
    again = run.resumed(noise_runs=2, workers=2)
    assert kinds(again.resume_decisions) == ["Promote", "Decided"]
    assert again.state.champion == SEED_MEMBER


def test_a_child_whose_parent_was_culled_while_it_waited_gets_a_living_parent():
    run = Run(noise_runs=2, workers=2, population_size=1)
    noise_done(run, (1.0, 1.0004))
    child = run.hand_out()
    run.finish(child, 1.01)                    # a member, culled at once (population size 1)
    assert not run.state.members[run.state.experiments[child].member].alive
    orphan = run.hand_out()
    run.state.experiments[orphan].parent_id = child
    run.lose(orphan)
    work = next(iter(run.state.pending.values()))
    work["parent"] = run.state.experiments[child].member
    train = run.policy.next_work(run.state)
    assert train.work.parent == SEED_MEMBER


def test_decision_events_replay_to_the_same_state():
    run = Run(noise_runs=2, workers=2, population_size=3, selection="margin")
    noise_done(run, (1.0, 1.0004))
    rng = random.Random(5)
    for _ in range(30):
        exp_id = run.hand_out()
        if rng.random() < 0.1:
            run.lose(exp_id)
        else:
            run.finish(exp_id, 1.0 + rng.gauss(0, 0.003))
    replayed = PopulationState.replay(run.journal, "val_bpb")
    assert replayed.pending == run.state.pending and replayed.champion == run.state.champion
    assert [m.name for m in replayed.living()] == [m.name for m in run.state.living()]
    assert replayed.noise_std == run.state.noise_std and replayed.undecided() == []
    assert not replayed.warnings


def test_decisions_map_to_their_journal_events():
    assert Promote("m0003").event() == {"type": "champion", "member": "m0003"}
    assert Cull("m0001", "age").event() == {"type": "member_culled", "member": "m0001"}
    assert NoiseMeasured(0.001, 3, 1).event() == {"type": "noise", "std": 0.001, "runs": 3, "commits": 1}
    assert Decided(7).event() == {"type": "decided", "id": 7}
    assert Drop(4, "lost").event()["type"] == "work_dropped" and Stop("x").event()["type"] == "stop"
    assert Queue(2, Work("rerun", "m0001", seed=43), reason="r").event() == {
        "type": "work_queued", "work": 2, "kind": "rerun", "member": "m0001", "parent": None, "seed": 43,
        "attempts": 0, "front": False, "reason": "r"}
