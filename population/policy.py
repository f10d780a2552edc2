"""The population's decisions: one object, pure, used by the driver and by every benchmark.

In the style of Ray Tune's trial schedulers: the caller tells the `Policy` what happened (the run
started, an experiment finished or was lost, the run resumed) and asks it what to train next; it
answers with decisions. It reads the `PopulationState` (population/state.py) and never changes it:
no Ray, git, files, clock or console here. The caller journals each decision (`decision.event()`),
applies that event to the state, then acts on it (git, the fleet, the console); the driver and the
landscape benches are two such callers.

Decisions come one at a time (generators): the caller applies each before asking for the next, so
that each one sees those before it (the cull protects the champion just promoted).

    start    -> the noise phase: the seed queued --noise-runs times
    result   -> the noise phase ends once no baseline is queued or in flight and the seed has two ok
                runs (a third is queued when it has one): the noise is the pooled spread of every
                commit trained more than once, refined whenever one is trained again; the seed is
                the first champion; children that finished meanwhile are judged in id order
             -> afterwards: judge (posterior: the best backed member, when probably better than the
                champion, once it has --promotion-runs runs of its own: with fewer, its confirming
                re-run is queued first, unless no training is left to hand out; margin: promote,
                queue a re-run, or keep the member of the result), then
                cull past the population size, protecting the champion, members awaiting a re-run
                and (posterior) promising members whose child is in flight
             -> the endgame (posterior, a known --max-experiments): in its last --endgame share, when
                the edits hide in the noise, the best members are re-run, then the probable best promoted
             -> `Decided`: the marker that closes the decisions of a result
    lost     -> the work queued again at the front, given up after MAX_ATTEMPTS losses: a child
                whose commit had reached the driver trains again as that commit (its own change)
                under a new id; one lost before (during its agent) is a new proposal from the
                same parent
    resume   -> what was in flight is lost (and queued again), results without their marker are
                judged again in the order they finished
"""
from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace

from population.config import (DEFAULT_CONFIRM_RUNS, DEFAULT_ENDGAME, DEFAULT_MAX_RUNS, DEFAULT_POPULATION_SIZE,
                               DEFAULT_PROMOTION_RUNS, DEFAULT_PROMOTION_Z,
                               DEFAULT_SEED, DEFAULT_SELECTION, RERUN_OPTIMISM, RunConfig,
                               default_noise_runs, default_promotion_confidence)
from population import ledger
from population.selection import (choose_culls, clears_margin, estimate_noise, posterior_choice, promotion_decision,
                                  step_spread, tournament_select)
from population.state import PopulationState

SEED_MEMBER = "m0000"          # the seed's member: its runs are the baselines
MAX_ATTEMPTS = 3               # a piece of work lost this often (node loss...) is given up
MIN_NOISE_RUNS = 2             # ok runs of the seed before the noise phase can end: one run has no spread
AGENT_FAILURES_TO_STOP = 5     # a worker whose agent fails the same way this often in a row stops
AGENT_BACKOFF_S = 15.0         # its pause before the next proposal after the 2nd such failure, doubled after each
ENDGAME_GATE = 3.0             # the endgame runs when the edits' spread is under this many noise stds
FINAL_CONFIDENCE = 0.7         # the endgame's last promotion: 0.5, the Bayes choice, put lucky promotions past
                               # half of greedy's for 0.01 noise std (development seeds; BENCHMARKS.md)


# ---------------------------------------------------------------- settings

@dataclass(frozen=True)
class Settings:
    """What the policy needs of a run's configuration (`from_config`); the benches build it directly.
    None: the default that depends on the number of workers (`resolved`)."""
    workers: int = 1
    selection: str = DEFAULT_SELECTION            # posterior | margin
    population_size: int = DEFAULT_POPULATION_SIZE
    tournament_size: int | None = None            # None: the whole population
    cull: str = "age"
    promotion_confidence: float | None = None     # posterior; None: 1 - 0.1/sqrt(workers)
    promotion_z: float = DEFAULT_PROMOTION_Z      # margin
    confirm_runs: int = DEFAULT_CONFIRM_RUNS
    promotion_runs: int = DEFAULT_PROMOTION_RUNS  # posterior: own runs before a promotion (fewer: re-run first)
    max_runs: int = DEFAULT_MAX_RUNS              # margin
    rerun_optimism: float | None = RERUN_OPTIMISM  # margin; None: re-run every gain (the first rule)
    noise_runs: int | None = None                 # None: default_noise_runs(workers)
    seed: int = DEFAULT_SEED
    max_experiments: int | None = None
    endgame: float = DEFAULT_ENDGAME              # posterior: share of max_experiments that re-runs the best (0: off)
    max_cost_usd: float | None = None             # agents' dollars, then no new work (population/ledger.py)
    max_gpu_hours: float | None = None            # GPU-hours of trainings and evaluations, likewise
    lower_is_better: bool = True

    @classmethod
    def from_config(cls, config: RunConfig, lower_is_better: bool = True) -> "Settings":
        return cls(workers=config.workers or 1, selection=config.selection, population_size=config.population_size,
                   tournament_size=config.tournament_size, cull=config.cull,
                   promotion_confidence=config.promotion_confidence, promotion_z=config.promotion_z,
                   confirm_runs=config.confirm_runs, promotion_runs=config.promotion_runs,
                   max_runs=config.max_runs_per_member,
                   noise_runs=config.noise_runs, seed=config.seed, max_experiments=config.max_experiments,
                   endgame=config.endgame,
                   max_cost_usd=config.max_cost_usd, max_gpu_hours=config.max_gpu_hours,
                   lower_is_better=lower_is_better).resolved()

    def resolved(self) -> "Settings":
        """Every None filled in as the driver fills it (population.config.resolve)."""
        return replace(self, tournament_size=self.tournament_size or self.population_size,
                       promotion_confidence=self.promotion_confidence or default_promotion_confidence(self.workers),
                       noise_runs=self.noise_runs or default_noise_runs(self.workers))

    @property
    def posterior(self) -> bool:
        return self.selection == "posterior"


# ---------------------------------------------------------------- work and decisions

@dataclass(frozen=True)
class Work:
    """A training to hand out: a baseline (the seed), a child, or a re-run of a member."""
    kind: str                      # baseline | child | rerun
    member: str | None = None      # baseline, rerun: the member; child: None (a new member)
    parent: str | None = None      # child: the parent member (None: chosen when it is handed out)
    seed: int = 0
    attempts: int = 0              # times this work was lost already
    commit: str | None = None      # child: train this commit (a lost child's own change), no agent
    retrains: int | None = None    # ... the lost experiment whose commit it is

    def fields(self) -> dict:
        """The journal's fields of this work (the retraining ones only when set)."""
        return {k: v for k, v in asdict(self).items() if v is not None or k not in ("commit", "retrains")}


@dataclass(frozen=True)
class Train:
    """Train this now (`next_work`); `work_id` is the queue entry it takes, None for a new child."""
    work: Work
    work_id: int | None = None

    def started(self, exp_id: int, member: str, parent_id: int | None, **fields) -> dict:
        """The `experiment_started` event of this training (the caller adds where and by whom)."""
        event = {"type": "experiment_started", "id": exp_id, "kind": self.work.kind, "member": member,
                 "parent_id": parent_id, "seed": self.work.seed, **fields}
        if self.work_id is not None:
            event["work"] = self.work_id
        if self.work.attempts:
            event["attempts"] = self.work.attempts
        if self.work.commit:
            event.update(commit=self.work.commit, retrains=self.work.retrains)
        return event


@dataclass(frozen=True)
class Queue:
    """Queue work: the noise phase's baselines, a margin re-run, lost work again."""
    work_id: int
    work: Work
    front: bool = False
    reason: str = ""
    lost: int | None = None        # the lost experiment whose work this is

    def event(self) -> dict:
        event = {"type": "work_queued", "work": self.work_id, **self.work.fields(), "front": self.front,
                 "reason": self.reason}
        if self.lost is not None:
            event["lost"] = self.lost
        return event


@dataclass(frozen=True)
class Promote:
    member: str
    previous: str | None = None

    def event(self) -> dict:
        return {"type": "champion", "member": self.member}


@dataclass(frozen=True)
class Cull:
    member: str
    rule: str

    def event(self) -> dict:
        return {"type": "member_culled", "member": self.member}


@dataclass(frozen=True)
class NoiseMeasured:
    """The noise std: the pooled spread of `commits` commits trained more than once, `runs` runs."""
    std: float
    runs: int
    commits: int
    previous: float | None = None

    def event(self) -> dict:
        return {"type": "noise", "std": self.std, "runs": self.runs, "commits": self.commits}


@dataclass(frozen=True)
class Lose:
    """An experiment in flight when the driver stopped: lost (its work is queued again after).
    `commit`: a child's commit that had reached the driver (its branch holds it)."""
    exp_id: int
    reason: str
    commit: str | None = None

    def event(self) -> dict:
        event = {"type": "experiment_lost", "id": self.exp_id, "reason": self.reason}
        if self.commit:
            event["commit"] = self.commit
        return event


@dataclass(frozen=True)
class Drop:
    """Lost work given up (lost MAX_ATTEMPTS times)."""
    exp_id: int
    reason: str

    def event(self) -> dict:
        return {"type": "work_dropped", "id": self.exp_id, "reason": self.reason}


@dataclass(frozen=True)
class Stop:
    """End the run: the seed failed in every baseline run, or never twice in a row of tries."""
    reason: str

    def event(self) -> dict:
        return {"type": "stop", "reason": self.reason}


@dataclass(frozen=True)
class Endgame:
    """The endgame's gate for a --max-experiments, decided once as its window opens: `spread`, the
    edits' spread in noise stds (None: too few edits to tell)."""
    on: bool
    max_experiments: int
    window: int
    spread: float | None = None

    def event(self) -> dict:
        return {"type": "endgame", "on": self.on, "max_experiments": self.max_experiments, "window": self.window,
                "spread": self.spread}


@dataclass(frozen=True)
class Decided:
    """Every decision of this result is journaled (what `--resume` looks for)."""
    exp_id: int

    def event(self) -> dict:
        return {"type": "decided", "id": self.exp_id}


Decision = Queue | Promote | Cull | NoiseMeasured | Lose | Drop | Stop | Endgame | Decided


def agent_backoff(streak: int) -> float | None:
    """After `streak` agent errors in a row that fail the same way (`failure_kind`), the seconds
    the worker waits before its next proposal (0 after the first: one failure is news, not a
    pattern), or None: the worker stops (a dead endpoint, a missing key: retrying cannot help)."""
    if streak >= AGENT_FAILURES_TO_STOP:
        return None
    return 0.0 if streak < 2 else AGENT_BACKOFF_S * 2 ** (streak - 2)


def failure_kind(reason: str) -> str:
    """What makes two agent errors "the same way": the first line, its numbers and object
    addresses blurred (ports, ids and durations vary between tries of one failure)."""
    first = next((line.strip() for line in str(reason).splitlines() if line.strip()), "")
    return re.sub(r"0x[0-9a-f]+|\d+", "#", first.lower())[:160]


class AgentStreaks:
    """Per worker, its agent's errors in a row that fail the same way (pure bookkeeping): `note`
    gives the worker's pause before its next proposal, or None when it must stop."""

    def __init__(self):
        self._streaks: dict[str, tuple[str, int]] = {}

    def note(self, worker: str, status: str, reason: str) -> tuple[int, float | None] | None:
        """(errors in a row, pause seconds or None to stop) after an agent error; None otherwise
        (any other outcome of a proposal ends the streak)."""
        if status != "agent_error":
            self._streaks.pop(worker, None)
            return None
        kind = failure_kind(reason)
        before, count = self._streaks.get(worker, (kind, 0))
        count = count + 1 if before == kind else 1
        self._streaks[worker] = (kind, count)
        return count, agent_backoff(count)


def apply(state: PopulationState, decision: Decision, time: float | None = None) -> dict:
    """The decision's event applied to `state` (what a caller without a journal does); returned."""
    event = decision.event()
    if time is not None:
        event["time"] = time
    state.apply(event)
    return event


# ---------------------------------------------------------------- the policy

class Policy:
    def __init__(self, settings: Settings, rng: random.Random | None = None):
        self.settings = settings.resolved()
        self.rng = rng or random.Random(settings.seed)

    # ---- handing out work ----------------------------------------------------------------

    def on_start(self, state: PopulationState) -> Iterator[Decision]:
        """A new run: the noise phase's baselines, first in the queue."""
        yield from self._top_up_baselines(state)

    def can_hand_out(self, state: PopulationState) -> bool:
        """Under --max-experiments (lost experiments do not count) and under the spending caps."""
        limit = self.settings.max_experiments
        return (limit is None or state.counted() < limit) and self.cap_reached(state) is None

    def cap_reached(self, state: PopulationState) -> str | None:
        """Why no new work starts for the money or the GPU time spent (one line), or None; what is in
        flight finishes and is recorded."""
        return ledger.cap_reached(state.agent_cost_usd, state.gpu_hours, self.settings.max_cost_usd,
                                  self.settings.max_gpu_hours)

    def next_work(self, state: PopulationState) -> Train | None:
        """What a free worker trains: the head of the queue, else a child of a tournament's winner
        (of the seed while the noise is unknown); None when nothing is left to hand out."""
        if not self.can_hand_out(state):
            return None
        for work_id, entry in state.pending.items():
            work = Work(**entry)
            if work.kind == "child" and not work.commit and not (work.parent in state.members
                                                                 and state.members[work.parent].alive):
                work = replace(work, parent=self._parent(state))     # its parent was culled meanwhile
            return Train(work, work_id)
        if state.noise_std is not None and not state.living():
            return None
        return Train(Work("child", parent=self._parent(state), seed=self.settings.seed))

    def _parent(self, state: PopulationState) -> str:
        if state.noise_std is None or not state.living():
            return SEED_MEMBER
        return tournament_select(self._candidates(state), self.settings.tournament_size, self.rng).member

    def _candidates(self, state: PopulationState):
        return state.candidates(estimated=self.settings.posterior)

    # ---- results ---------------------------------------------------------------------------

    def on_result(self, state: PopulationState, exp_id: int) -> Iterator[Decision]:
        """The decisions after `exp_id`'s result (ok or not), closed by its `Decided` marker."""
        exp = state.experiments[exp_id]
        if state.noise_std is None:
            stop = yield from self._noise_phase(state)
            if stop:
                return
        elif state.champion is None or exp.kind == "baseline":
            yield from self._noise_known(state)          # the result that ended the noise phase, again
        else:
            member = state.members.get(exp.member)
            if member is not None and exp_id in member.run_ids:      # an ok run that counts
                if len(member.runs) > 1:
                    yield from self._refine_noise(state)
                if member.alive and member.name != state.champion:
                    yield from self._judge(state, member.name)
            yield from self._cull(state)
        yield from self._endgame(state)
        yield Decided(exp_id)

    def _noise_phase(self, state: PopulationState) -> Iterator[Decision]:
        """Ends once no baseline is queued or in flight: the seed's ok runs measure the noise."""
        if any(w["kind"] == "baseline" for w in state.pending.values()) or \
                any(e.kind == "baseline" for e in state.in_flight()):
            return False
        seed = state.members.get(SEED_MEMBER)
        runs = len(seed.runs) if seed else 0
        if runs == 0:
            yield Stop("the unmodified seed failed in every baseline run")
            return True
        if runs < MIN_NOISE_RUNS:
            tried = sum(1 for i in state.experiment_ids(SEED_MEMBER) if state.experiments[i].phase == "finished")
            if tried >= self.settings.noise_runs + MAX_ATTEMPTS:
                yield Stop(f"the unmodified seed trained ok only once in {tried} baseline runs: no noise to measure")
                return True
            yield Queue(state.next_work_id(), Work("baseline", SEED_MEMBER, seed=self._free_seed(state)), front=True,
                        reason="one ok run of the seed measures no spread: it trains again")
            return False
        yield from self._noise_known(state)
        return False

    def _noise_known(self, state: PopulationState) -> Iterator[Decision]:
        """The noise phase's end: the noise, the seed as first champion, then the children that
        finished meanwhile judged in id order (the best becomes champion only by beating the seed,
        then each other), and the cull. Every step is a no-op when done already (a resumed run)."""
        yield from self._refine_noise(state)
        if state.champion is None:
            yield Promote(SEED_MEMBER if SEED_MEMBER in state.members and state.members[SEED_MEMBER].alive
                          else state.best_member())
        waiting = sorted((m for m in state.living() if m.name != SEED_MEMBER and m.runs), key=lambda m: m.first_id)
        for member in waiting:
            if member.alive and member.name != state.champion:
                yield from self._judge(state, member.name)
        yield from self._cull(state)

    def _refine_noise(self, state: PopulationState) -> Iterator[Decision]:
        """The noise from every commit trained more than once, when it moved."""
        sum_squares, dof = state.spread()
        if dof < 1:
            return
        seed = state.members.get(SEED_MEMBER)
        std = estimate_noise(sum_squares, dof, seed.mean if seed else 1.0)
        if state.noise_std is None or abs(std - state.noise_std) > 1e-12 * max(std, 1.0):
            yield NoiseMeasured(std, dof + state.repeated(), state.repeated(), state.noise_std)

    def _judge(self, state: PopulationState, name: str) -> Iterator[Decision]:
        """After a result of `name`: promote whom the rule says, or queue its re-run (margin).
        Posterior selection looks at every living member: a child's result also moves its parent's."""
        s = self.settings
        champion = state.champion
        if s.posterior:
            best = posterior_choice(self._candidates(state), champion, state.posterior,
                                    confidence=s.promotion_confidence, min_evidence=s.confirm_runs)
            if best is None:
                return
            runs = len(state.members[best].runs)
            if champion is None or runs >= s.promotion_runs or not self.can_hand_out(state):
                yield Promote(best, champion)
                return
            if best not in self._rerunning(state):
                yield self._rerun(state, best, f"would be promoted on {runs} run{'s' * (runs != 1)} of its own, "
                                               "so it is confirmed first")
            return
        member = state.members[name]
        champion_runs = state.members[champion].runs if champion else []
        decision = promotion_decision(member.runs, champion_runs, state.noise_std, z=s.promotion_z,
                                      min_runs=s.confirm_runs, max_runs=s.max_runs, rerun_optimism=s.rerun_optimism,
                                      lower_is_better=s.lower_is_better)
        if decision == "promote":
            yield Promote(name, champion)
        elif decision == "rerun" and name not in self._rerunning(state):
            runs = len(member.runs)
            if clears_margin(member.runs, champion_runs, state.noise_std, z=s.promotion_z,
                             lower_is_better=s.lower_is_better):
                why = f"beats the champion past the noise margin on {runs} of {s.confirm_runs} runs"
            else:
                why = "beats the champion by less than the noise margin"
            yield self._rerun(state, name, why)

    def _rerun(self, state: PopulationState, member: str, reason: str) -> Queue:
        """Train `member` once more, on the next seed after those of its runs so far."""
        seed = self.settings.seed + len(state.members[member].runs)
        return Queue(state.next_work_id(), Work("rerun", member, seed=seed), reason=reason)

    @staticmethod
    def _rerunning(state: PopulationState) -> set[str]:
        """Members with a re-run queued or in flight."""
        return ({w["member"] for w in state.pending.values() if w["kind"] == "rerun"}
                | {e.member for e in state.in_flight() if e.kind == "rerun"})

    def _cull(self, state: PopulationState) -> Iterator[Decision]:
        """Past the population size: the oldest (or the worst of a tournament) die, never the
        champion, a member awaiting its re-run, or (posterior) a promising member whose child is
        in flight. A population whose size was lowered (--resume --set) shrinks by one member per
        result (state.population_floor), never in one mass cull."""
        s = self.settings
        protect = {state.champion} | self._rerunning(state)
        if s.posterior:
            protect |= state.awaiting_confirmation(s.confirm_runs)
        size = max(s.population_size, state.population_floor or 0)     # a smaller size: one member per result
        for name in choose_culls(self._candidates(state), size, s.cull, s.tournament_size, self.rng,
                                 frozenset(protect)):
            yield Cull(name, s.cull)

    # ---- the endgame ------------------------------------------------------------------------

    def _endgame(self, state: PopulationState) -> Iterator[Decision]:
        """The last --endgame share of a known --max-experiments (posterior selection). As its window
        opens the gate is decided once and journaled: on when the run's edits land within
        ENDGAME_GATE noise stds of each other (selection.step_spread), where the best members are
        hard to tell apart on one or two runs; off where they stand out, and every training is
        better spent on a new child. While on, each result with nothing queued queues a re-run
        of the best living member not already re-running; once no training is left and nothing
        is in flight, the member the posterior rates better with FINAL_CONFIDENCE is promoted
        without the usual confidence (nothing is gained by waiting any longer)."""
        s = self.settings
        limit = s.max_experiments
        if not (s.posterior and s.endgame and limit) or state.champion is None or state.noise_std is None:
            return
        window = max(1, round(s.endgame * limit))
        if limit - state.counted() > window:
            return
        if state.endgame is None or state.endgame["max_experiments"] != limit:
            spread = step_spread(state.first_run_steps(), state.noise_std)
            yield Endgame(spread is None or spread < ENDGAME_GATE, limit, window, spread)
        if not state.endgame["on"]:
            return
        if self.can_hand_out(state):
            if not state.pending:
                rerunning = self._rerunning(state)
                best = min((c for c in self._candidates(state) if c.member not in rerunning),
                           key=lambda c: (c.score, c.born), default=None)
                if best is not None:
                    yield self._rerun(state, best.member, "is among the best members in the endgame")
        elif not state.in_flight():
            best = posterior_choice(self._candidates(state), state.champion, state.posterior,
                                    confidence=FINAL_CONFIDENCE, min_evidence=s.confirm_runs)
            if best is not None:
                yield Promote(best, state.champion)

    # ---- lost work and resuming ------------------------------------------------------------

    def on_lost(self, state: PopulationState, exp_id: int, front: bool = True) -> Iterator[Decision]:
        """`exp_id` was lost (its node, worker or driver died): its work is queued again, unless it
        was lost MAX_ATTEMPTS times. A child whose commit had reached the driver (its lost event
        names the commit, on its branch) trains again as that commit, its own change, under a new
        id; a child lost before (during its agent) is a new proposal from the same parent."""
        exp = state.experiments[exp_id]
        started = exp.started
        attempts = int(started.get("attempts") or 0) + 1
        if attempts >= MAX_ATTEMPTS:
            yield Drop(exp_id, f"lost {attempts} times: given up")
            return
        parent, commit, what = None, None, f"and queued again: the {exp.kind} trains again"
        if exp.kind == "child":
            parent_exp = state.experiments.get(exp.parent_id)
            parent = parent_exp.member if parent_exp else None
            commit = exp.lost_commit or None
            what = (f"after its commit {commit[:9]} reached the driver: that commit trains again under a new id"
                    if commit else f"before its commit reached the driver: a new proposal from {parent}")
        member = None if exp.kind == "child" else exp.member
        work = Work(exp.kind, member, parent, int(started.get("seed", self.settings.seed)), attempts, commit,
                    exp_id if commit else None)
        yield Queue(state.next_work_id(), work, front=front, reason=f"e{exp_id:04d} lost {what}", lost=exp_id)

    def on_resume(self, state: PopulationState, reason: str = "in flight when the driver stopped",
                  commits: dict[int, str] | None = None) -> Iterator[Decision]:
        """A resumed run: what was in flight is lost and queued again (in id order, behind the
        queue; `commits`: the children whose commit had reached the driver, by id), a journal from
        before the queue gets its missing baselines, and each result without its marker is judged
        again, in the order they finished."""
        commits = commits or {}
        for exp in state.in_flight():
            yield Lose(exp.id, reason, commits.get(exp.id))
            yield from self.on_lost(state, exp.id, front=False)
        if state.noise_std is None:
            yield from self._top_up_baselines(state)
        for exp_id in state.undecided():
            yield from self.on_result(state, exp_id)

    def _top_up_baselines(self, state: PopulationState) -> Iterator[Decision]:
        """Baselines queued (at the front) until --noise-runs are finished, queued or in flight."""
        counted = sum(1 for i in state.experiment_ids(SEED_MEMBER) if state.experiments[i].phase != "lost")
        queued = sum(1 for w in state.pending.values() if w["kind"] == "baseline")
        missing = max(0, self.settings.noise_runs - counted - queued)
        seeds = []
        for _ in range(missing):
            seeds.append(self._free_seed(state, taken=seeds))
        for seed in reversed(seeds):      # each at the front: the first seed ends up first
            yield Queue(state.next_work_id(), Work("baseline", SEED_MEMBER, seed=seed), front=True,
                        reason="the noise phase")

    def _free_seed(self, state: PopulationState, taken=()) -> int:
        """The first training seed from --seed on that no baseline used or has queued."""
        used = {int(state.experiments[i].started.get("seed", -1)) for i in state.experiment_ids(SEED_MEMBER)}
        used |= {int(w["seed"]) for w in state.pending.values() if w["kind"] == "baseline"} | set(taken)
        seed = self.settings.seed
        while seed in used:
            seed += 1
        return seed
