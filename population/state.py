"""The population's state, rebuilt from the journal (pure: no files, no Ray, no git).

The driver appends every event to `events.jsonl` before acting on it and applies the same event
to a `PopulationState`; `PopulationState.replay(events, ...)` on resume therefore yields exactly the
state the live driver had. Rules that make replay safe:
- an experiment counts once: a second `experiment_finished` for an id, or one for an id already
  lost, is ignored (with a warning kept in `state.warnings`);
- a lost experiment never counts (its work is re-queued under a new id);
- in flight = started, neither finished nor lost.
A finished child with status ok becomes a living member; a finished re-run (or another baseline
run) with status ok adds a run to its member. Selection uses either the mean of a member's runs
or its estimate from the lineage posterior (population.posterior), which the state keeps up to date
from the same events: a node per started child, a run per ok result, retired when culled or failed.

The policy's decisions (population.policy) are journaled too, so the state also holds what they
built: the queue of pending work (`work_queued`, taken by the `experiment_started` that names its
`work`), the results whose decisions are not all recorded yet (an `experiment_finished` without its
`decided` marker), and the spread of every commit trained more than once (the noise).

The driver asks its questions after every event, over 100,000 experiments and more, so each query
the driver makes per experiment costs O(living members + in flight), never O(experiments): the
state keeps indexes (in flight, living, counts, the recent failures) and each recorded
experiment's lineage row, built once; only the member columns are filled in when asked.
"""
from __future__ import annotations

import bisect
import itertools
import logging
import math
import statistics
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from population import ledger
from population.posterior import LineagePosterior
from population.selection import Candidate

log = logging.getLogger(__name__)

SUMMARY_FLOAT_COLUMNS = ("training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent",
                         "total_tokens_M", "num_steps", "num_params_M", "depth")
METRIC_PLACEHOLDER = "<metric>"
HOLDOUT_PLACEHOLDER = "<holdout>"
REPORTED_PLACEHOLDER = "<reported>"
# The columns of lineage.parquet (docs/ARCHITECTURE.md), in order, with their kind.
_LINEAGE_SCHEMA: tuple[tuple[str, str], ...] = (
    ("id", "int"), ("kind", "str"), ("member", "str"), ("parent_id", "int"),
    ("commit", "str"), ("parent_commit", "str"), ("branch", "str"),
    ("status", "str"), ("reason", "str"),
    (METRIC_PLACEHOLDER, "float"), ("metric_mean", "float"), (HOLDOUT_PLACEHOLDER, "float"),
    (REPORTED_PLACEHOLDER, "float"),
    *((name, "float") for name in SUMMARY_FLOAT_COLUMNS),
    ("alive", "bool"), ("champion", "bool"), ("culled_at", "float"), ("generation", "int"),
    ("gpu", "str"), ("node", "str"), ("worker", "str"), ("agent", "str"),
    ("agent_seconds", "float"), ("agent_cost_usd", "float"), ("agent_tokens", "int"),
    ("train_seconds", "float"), ("busy_seconds", "float"), ("eval_seconds", "float"), ("description", "str"),
    ("seed", "int"), ("budget_s", "float"), ("started_at", "float"), ("finished_at", "float"),
)
# Fields of `experiment_started` copied into the lineage row ("time" becomes started_at).
_STARTED_FIELDS = ("kind", "member", "parent_id", "parent_commit", "worker", "agent", "seed", "budget_s")

IN_FLIGHT, FINISHED, LOST = "in_flight", "finished", "lost"
# Columns that follow the member's current state; the rest of a recorded row never changes.
_MEMBER_COLUMNS = ("metric_mean", "alive", "champion", "culled_at")
# Journals written before the decided markers: a result counts as decided once any of these follows it.
_LEGACY_DECISIONS = ("champion", "member_culled", "noise")
RECENT_FAILURES_KEPT = 64          # the newest failures (by id) context_rows() can show


def holdout_column(metric: str) -> str:
    """The hidden holdout's column for `metric`: val_bpb -> holdout_bpb (selection never reads it)."""
    return "holdout_" + metric.removeprefix("val_")


def lineage_columns(metric: str) -> list[tuple[str, str]]:
    """(column, kind) of lineage.parquet in order; kind is "int", "float", "str" or "bool"."""
    names = {METRIC_PLACEHOLDER: metric, HOLDOUT_PLACEHOLDER: holdout_column(metric),
             REPORTED_PLACEHOLDER: "reported_" + metric}
    return [(names.get(name, name), kind) for name, kind in _LINEAGE_SCHEMA]


@dataclass
class Experiment:
    """One training of one commit, as the journal knows it."""
    id: int
    kind: str                      # baseline | child | rerun
    member: str
    parent_id: int | None
    started: dict[str, Any]        # the experiment_started event
    generation: int
    phase: str = IN_FLIGHT         # in_flight | finished | lost
    row: dict[str, Any] = field(default_factory=dict)   # the experiment_finished row
    lost_reason: str = ""
    lost_at: float | None = None
    lost_commit: str = ""          # a lost child's commit that had reached the driver (it trains again)
    lost_description: str = ""


@dataclass
class Member:
    """A commit that trained ok at least once: a branch of the population."""
    name: str
    first_id: int                  # the experiment that made it a member
    commit: str
    branch: str
    runs: list[float]              # every ok metric value of this commit
    alive: bool = True
    born: int = 0                  # birth order among members (0 = oldest)
    culled_at: float | None = None
    generation: int = 0
    parent: str | None = None      # parent member's name (None for the baseline)
    run_ids: list[int] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.runs)


def member_name(number: int) -> str:
    return f"m{number:04d}"


class PopulationState:
    def __init__(self, metric: str, lower_is_better: bool = True):
        self.metric = metric
        self.lower_is_better = lower_is_better
        self.experiments: dict[int, Experiment] = {}
        self.members: dict[str, Member] = {}
        self.champion: str | None = None
        self.noise_std: float | None = None
        self.run_state: str | None = None
        self.warnings: list[str] = []
        self.posterior = LineagePosterior()
        # indexes, so that the driver's per-experiment questions do not scan every experiment
        self._in_flight: dict[int, Experiment] = {}
        self._living: dict[str, Member] = {}           # in birth order
        self._recorded: list[int] = []                 # ids of finished or lost experiments, sorted
        self._static_rows: dict[int, dict] = {}        # id -> lineage row without the member columns
        self._ids_by_member: dict[str, list[int]] = {}
        self._failures: list[int] = []                 # the newest failed ids, sorted
        self._max_id = -1
        self._max_member = 0                           # the highest mNNNN number started (0: the seed's)
        self._lost = 0
        self._finished = 0
        self._ok = 0
        # what the policy's journaled decisions built
        self.pending: OrderedDict[int, dict] = OrderedDict()   # work id -> queued work, in hand-out order
        self._next_work_id = 0
        self._undecided: dict[int, None] = {}            # finished ids without their decided marker, in order
        self._markers = False                             # a decided marker was seen (else: a legacy journal)
        self._spread: dict[str, float] = {}               # member -> sum of squares about its mean (runs >= 2)
        self._spread_total = 0.0
        self._spread_dof = 0
        # what the run spent (population.ledger), kept as it goes: the policy's caps ask every dispatch
        self.agent_cost_usd = 0.0
        self.gpu_hours = 0.0
        # --resume --set: each change of the run's settings, and a smaller population shrinking
        self.settings_changes: list[dict] = []          # {"time", "changes": {field: [old, new]}, "experiments"}
        self._shrink: tuple[int, int] | None = None     # (population size, living members it may still hold)
        self.endgame: dict | None = None                # the endgame's gate: {"on", "max_experiments"} (policy.py)

    @classmethod
    def replay(cls, events: Iterable[dict], metric: str, lower_is_better: bool = True) -> "PopulationState":
        """The state after applying `events` in order (what the live driver had)."""
        state = cls(metric, lower_is_better)
        for event in events:
            state.apply(event)
        return state

    # ---- applying events -------------------------------------------------------------------

    def apply(self, event: dict) -> None:
        """Apply one journal event. Unknown or inconsistent events are ignored with a warning."""
        handler = getattr(self, f"_on_{event.get('type')}", None)
        if handler is None:
            self._warn(f"ignored event of unknown type {event.get('type')!r}")
            return
        try:
            handler(event)
        except (KeyError, TypeError, ValueError) as e:
            self._warn(f"ignored malformed {event.get('type')} event ({type(e).__name__}: {e})")
            return
        self._legacy_rule(event)

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning(message)

    def _on_experiment_started(self, event: dict) -> None:
        exp_id = int(event["id"])
        if exp_id in self.experiments:
            self._warn(f"experiment {exp_id} started twice; the second start is ignored")
            return
        if event.get("work") is not None:                 # handed out from the queue
            self.pending.pop(int(event["work"]), None)
        parent_id = event.get("parent_id")
        exp = Experiment(id=exp_id, kind=event["kind"], member=event["member"],
                         parent_id=None if parent_id is None else int(parent_id),
                         started=dict(event), generation=self._generation_of(event))
        self.experiments[exp_id] = exp
        self._in_flight[exp_id] = exp
        self._ids_by_member.setdefault(exp.member, []).append(exp_id)
        self._max_id = max(self._max_id, exp_id)
        if exp.member[1:].isdigit():
            self._max_member = max(self._max_member, int(exp.member[1:]))
        if exp.kind in ("baseline", "child"):
            self._add_to_lineage(exp)

    def _add_to_lineage(self, exp: Experiment) -> None:
        """A node for the experiment's commit, at its start: its parent must not be folded away
        while it trains."""
        if exp.member in self.posterior:
            return
        if exp.kind == "baseline":
            if len(self.posterior):
                self._warn(f"experiment {exp.id} is a second baseline member; the posterior leaves it out")
            else:
                self.posterior.add(exp.member, None)
            return
        parent = self.experiments.get(exp.parent_id)
        if parent is None or parent.member not in self.posterior:
            self._warn(f"experiment {exp.id}'s parent is not in the lineage; the posterior leaves it out")
            return
        self.posterior.add(exp.member, parent.member)

    def _generation_of(self, event: dict) -> int:
        """0 for a baseline, the member's generation for a re-run, the parent's + 1 for a child."""
        if event["kind"] == "baseline":
            return 0
        if event["kind"] == "rerun" and event["member"] in self.members:
            return self.members[event["member"]].generation
        parent = self.experiments.get(event.get("parent_id"))
        if parent is None:
            return 1 if event.get("parent_id") is not None else 0
        if event["kind"] == "rerun" and parent.member == event["member"]:
            return parent.generation
        return parent.generation + 1

    def _on_experiment_finished(self, event: dict) -> None:
        exp = self.experiments.get(int(event["id"]))
        if exp is None:
            self._warn(f"finished event for unknown experiment {event['id']} ignored")
            return
        if exp.phase != IN_FLIGHT:
            self._warn(f"experiment {exp.id} already {exp.phase}; its finished event is ignored")
            return
        exp.phase, exp.row = FINISHED, dict(event.get("row") or {})
        self._recorded_now(exp)
        self._finished += 1
        if self._shrink is not None:                     # one member fewer per result
            size, floor = self._shrink
            self._shrink = (size, floor - 1) if floor - 1 > size else None
        self.agent_cost_usd += ledger.agent_cost(exp.row)
        self.gpu_hours += ledger.gpu_hours(exp.row)
        self._undecided[exp.id] = None
        status = exp.row.get("status")
        if status == "ok":
            self._ok += 1
        elif status is not None:
            self._note_failure(exp.id)
        value = _as_float(exp.row.get(self.metric))
        if status != "ok" or not math.isfinite(value):
            self._drop_unborn(exp)
            return
        member = self.members.get(exp.member)
        if member is None:
            if exp.kind == "rerun":
                self._warn(f"re-run {exp.id} of unknown member {exp.member} does not count")
                return
            parent = self.experiments.get(exp.parent_id)
            member = self.members[exp.member] = Member(
                name=exp.member, first_id=exp.id, commit=str(exp.row.get("commit") or ""),
                branch=str(exp.row.get("branch") or ""), runs=[value], born=len(self.members),
                generation=exp.generation, parent=parent.member if parent else None, run_ids=[exp.id])
            self._living[member.name] = member
            self._observe(member.name, value)
            return
        if exp.row.get("commit") and member.commit and exp.row["commit"] != member.commit:
            self._warn(f"experiment {exp.id} ran commit {exp.row['commit']} but member "
                       f"{member.name} is {member.commit}; the run does not count")
            return
        before = member.mean
        member.runs.append(value)
        member.run_ids.append(exp.id)
        self._spread_dof += 1                             # Welford: the commit's spread, updated in O(1)
        added = (value - before) * (value - member.mean)
        self._spread[member.name] = self._spread.get(member.name, 0.0) + added
        self._spread_total += added
        self._observe(member.name, value)

    def _observe(self, member: str, value: float) -> None:
        if member in self.posterior:
            self.posterior.observe(member, value if self.lower_is_better else -value)

    def _drop_unborn(self, exp: Experiment) -> None:
        """A child that failed or was lost never becomes a member: its node leaves the lineage."""
        if exp.kind == "child" and exp.member not in self.members and exp.member in self.posterior:
            self.posterior.retire(exp.member)

    def _on_experiment_lost(self, event: dict) -> None:
        exp = self.experiments.get(int(event["id"]))
        if exp is None:
            self._warn(f"lost event for unknown experiment {event['id']} ignored")
            return
        if exp.phase != IN_FLIGHT:
            self._warn(f"experiment {exp.id} already {exp.phase}; its lost event is ignored")
            return
        exp.phase, exp.lost_reason, exp.lost_at = LOST, str(event.get("reason", "")), event.get("time")
        exp.lost_commit, exp.lost_description = str(event.get("commit") or ""), str(event.get("description") or "")
        self._recorded_now(exp)
        self._lost += 1
        self._drop_unborn(exp)

    def _recorded_now(self, exp: Experiment) -> None:
        """An experiment left flight: index it and build its row (it never changes again)."""
        self._in_flight.pop(exp.id, None)
        bisect.insort(self._recorded, exp.id)
        self._static_rows[exp.id] = self._static_row(exp)

    def _note_failure(self, exp_id: int) -> None:
        bisect.insort(self._failures, exp_id)
        del self._failures[:-RECENT_FAILURES_KEPT]

    def _on_member_culled(self, event: dict) -> None:
        member = self.members.get(event["member"])
        if member is None:
            self._warn(f"cull of unknown member {event['member']} ignored")
            return
        if member.alive:
            member.alive, member.culled_at = False, event.get("time")
            self._living.pop(member.name, None)
            if member.name in self.posterior:
                self.posterior.retire(member.name)

    def _on_champion(self, event: dict) -> None:
        if event["member"] not in self.members:
            self._warn(f"champion event for unknown member {event['member']} ignored")
            return
        self.champion = event["member"]

    def _on_noise(self, event: dict) -> None:
        self.noise_std = float(event["std"])
        self.posterior.set_noise(self.noise_std)

    def _on_endgame(self, event: dict) -> None:
        self.endgame = {"on": bool(event["on"]), "max_experiments": int(event["max_experiments"])}

    def _on_run_state(self, event: dict) -> None:
        self.run_state = event["state"]

    def _on_work_queued(self, event: dict) -> None:
        work_id = int(event["work"])
        work = {name: event.get(name) for name in ("kind", "member", "parent", "seed", "attempts", "commit", "retrains")}
        if work["kind"] not in ("baseline", "child", "rerun"):
            raise ValueError(f"unknown kind of work {work['kind']!r}")
        self.pending[work_id] = work
        if event.get("front"):
            self.pending.move_to_end(work_id, last=False)
        self._next_work_id = max(self._next_work_id, work_id + 1)
        if event.get("lost") is not None:                # lost work queued again: its row says how
            self._tell_lost_row(int(event["lost"]), str(event.get("reason") or ""))

    def _on_work_dropped(self, event: dict) -> None:
        if event.get("work") is not None:
            self.pending.pop(int(event["work"]), None)
        if event.get("id") is not None:
            self._tell_lost_row(int(event["id"]), str(event.get("reason") or ""))

    def _tell_lost_row(self, exp_id: int, what: str) -> None:
        """What became of a lost experiment's work, after its lost reason in its lineage row."""
        row = self._static_rows.get(exp_id)
        if row is not None and row.get("status") == "lost" and what:
            row["reason"] = f"{row['reason']}; {what}" if row.get("reason") else what

    def _on_decided(self, event: dict) -> None:
        self._markers = True
        self._undecided.pop(int(event["id"]), None)

    def _on_settings_changed(self, event: dict) -> None:
        """The run's settings changed on purpose (--resume --set): kept for run.json; a smaller
        population size starts a shrink of one member per result from the living count now."""
        changes = {str(name): list(change) for name, change in dict(event["changes"]).items()}
        self.settings_changes.append({"time": event.get("time"), "changes": changes, "experiments": self.counted()})
        if "population_size" in changes:
            size = int(changes["population_size"][1])
            self._shrink = (size, len(self._living)) if len(self._living) > size else None

    @property
    def population_floor(self) -> int | None:
        """While a population shrinks (its size lowered by --set): the living members it may still
        hold after this result's decisions, one fewer per result; None otherwise."""
        return self._shrink[1] if self._shrink is not None else None

    def _on_stop(self, event: dict) -> None:
        """The policy stopped the run (the seed failed in every baseline run); the run_state follows."""

    def _legacy_rule(self, event: dict) -> None:
        """In a journal without decided markers (written before them), a result is decided once a
        decision event follows it: the rule `apply` uses while it has seen no marker."""
        if not self._markers and event.get("type") in _LEGACY_DECISIONS:
            self._undecided.clear()

    # ---- queries ---------------------------------------------------------------------------

    def next_id(self) -> int:
        """The id of the next experiment (ids are never reused, not even those of lost ones)."""
        return self._max_id + 1

    def next_member(self) -> str:
        """The name of the next new member (names are never reused, not even a crashed child's)."""
        return member_name(self._max_member + 1)

    def next_work_id(self) -> int:
        """The id of the next queued piece of work."""
        return self._next_work_id

    def undecided(self) -> list[int]:
        """Finished experiments whose decisions are not all journaled (the driver stopped between
        the result and its `decided` marker), in the order they finished."""
        return list(self._undecided)

    def spread(self) -> tuple[float, int]:
        """(sum of squared deviations from each commit's own mean, degrees of freedom) over every
        commit trained ok more than once: the pooled variance of the noise is their ratio."""
        return self._spread_total, self._spread_dof

    def first_run_steps(self) -> list[float]:
        """Each child's first ok run minus its parent's mean, culled members too: what its edit did,
        seen through the noise."""
        return [member.runs[0] - self.members[member.parent].mean for member in self.members.values()
                if member.runs and member.parent in self.members]

    def repeated(self) -> int:
        """Commits (members) trained ok more than once."""
        return len(self._spread)

    def in_flight(self, newest: int | None = None) -> list[Experiment]:
        """Started, neither finished nor lost, in id order; only the `newest` ones when given
        (the prompt shows a few: no need to walk all 1,000 of a large run)."""
        if newest is None:
            return sorted(self._in_flight.values(), key=lambda e: e.id)
        recent = list(itertools.islice(reversed(self._in_flight.values()), newest)) if newest > 0 else []
        return sorted(recent, key=lambda e: e.id)   # started in id order, so these are the newest

    def experiment_ids(self, member: str) -> list[int]:
        """Ids of every experiment started for `member` (its first run, re-runs, lost tries)."""
        return list(self._ids_by_member.get(member, ()))

    def first_id(self, member: str) -> int | None:
        """The experiment that made `member` (its first ok run; before one, its first start that
        is not a re-run), None for a name never started."""
        if member in self.members:
            return self.members[member].first_id
        ids = [i for i in self._ids_by_member.get(member, ()) if self.experiments[i].kind != "rerun"]
        return min(ids) if ids else None

    def origin(self, member: str) -> tuple[str | None, int | None, str | None]:
        """(parent member, parent's experiment id, parent commit) of `member` (what its re-runs
        record); (None, None, None) for the seed or a member of unknown origin."""
        first = self.experiments.get(self.first_id(member))
        if first is None or first.parent_id is None:
            return None, None, None
        parent = self.experiments.get(first.parent_id)
        return parent.member if parent else None, first.parent_id, str(first.started.get("parent_commit") or "")

    def counted(self) -> int:
        """Experiments that count toward --max-experiments: started and not lost."""
        return len(self.experiments) - self._lost

    def finished_count(self) -> int:
        return self._finished

    def ok_count(self) -> int:
        """Finished experiments with status ok."""
        return self._ok

    def living(self) -> list[Member]:
        """The living members, oldest first."""
        return list(self._living.values())

    def score(self, member: str) -> float:
        """The member's mean oriented lower-is-better (what selection compares)."""
        mean = self.members[member].mean
        return mean if self.lower_is_better else -mean

    def estimate(self, member: str) -> float:
        """The member's value as the lineage posterior sees it, oriented lower-is-better; its
        score (mean) while the posterior cannot say (no noise yet, or left out of the lineage)."""
        estimate = self.posterior.mean(member) if member in self.posterior else math.inf
        return estimate if math.isfinite(estimate) else self.score(member)

    def awaiting_confirmation(self, min_evidence: int) -> set[str]:
        """Living members that the posterior rates better than the champion but that fewer than
        `min_evidence` trainings back yet, with a child in flight that will: posterior selection
        keeps them from the cull until it returns, as the margin rule keeps a member awaiting its
        re-run (with many workers, members otherwise age out before their children come back)."""
        if self.champion is None or self.champion not in self.posterior:
            return set()
        bar = self.estimate(self.champion)
        parents = {self.experiments[e.parent_id].member for e in self._in_flight.values()
                   if e.kind == "child" and e.parent_id in self.experiments}
        return {name for name in parents
                if name in self._living and name in self.posterior
                and self.posterior.evidence(name) < min_evidence and self.estimate(name) < bar}

    def candidates(self, estimated: bool = False) -> list[Candidate]:
        """The living members as selection records, scored by their mean or (`estimated`) by
        the lineage posterior's estimate."""
        score = self.estimate if estimated else self.score
        return [Candidate(m.name, score(m.name), m.born) for m in self.living()]

    def champion_member(self) -> Member | None:
        """The champion's Member record, None before the first promotion."""
        return self.members.get(self.champion) if self.champion else None

    def best_member(self) -> str | None:
        """The living member with the best mean (ties: the older), None when there is none."""
        living = self.candidates()
        return min(living, key=lambda c: (c.score, c.born)).member if living else None

    def in_flight_rows(self) -> list[dict]:
        """The started events of the experiments in flight (context for agents, the app)."""
        return [dict(e.started) for e in self.in_flight()]

    def lineage_rows(self) -> list[dict]:
        """One dict per finished or lost experiment, in id order, with exactly the columns of
        lineage.parquet; member state (metric_mean, alive, champion, culled_at) is the current one."""
        return [self._lineage_row(exp_id) for exp_id in self._recorded]

    def context_rows(self, parent_id: int | None) -> list[dict]:
        """The lineage rows an agent's prompt draws on (population/context.py), in id order:
        the parent's ancestry, every experiment of the parent's member and of each living member,
        and the newest failures. build_prompt gives the same text from these as from every row,
        at a cost that does not grow with the number of experiments."""
        ids = set(self._failures)
        current, seen = parent_id, set()
        while current is not None and current in self.experiments and current not in seen:
            seen.add(current)
            current = self.experiments[current].parent_id
        ids |= seen
        parent = self.experiments.get(parent_id) if parent_id is not None else None
        members = [parent.member] if parent is not None else []
        for name in members + list(self._living):
            ids.update(self._ids_by_member.get(name, ()))
        return [self._lineage_row(exp_id) for exp_id in sorted(ids) if exp_id in self._static_rows]

    def _lineage_row(self, exp_id: int) -> dict:
        row = dict(self._static_rows[exp_id])
        member = self.members.get(row["member"])
        row["metric_mean"] = member.mean if member else math.nan
        row["alive"] = bool(member and member.alive)
        row["champion"] = row["member"] == self.champion
        culled_at = member.culled_at if member else None
        row["culled_at"] = _as_float(culled_at)
        return row

    def _static_row(self, exp: Experiment) -> dict:
        """The experiment's lineage row without the member columns (which follow the member)."""
        return self._row(exp, lineage_columns(self.metric))   # member columns: placeholders, kept in order

    def _row(self, exp: Experiment, columns: list[tuple[str, str]]) -> dict:
        values: dict[str, Any] = {name: exp.started.get(name) for name in _STARTED_FIELDS}
        values["started_at"] = exp.started.get("time")
        values.update({k: v for k, v in exp.row.items() if v is not None})
        values.update(id=exp.id, kind=exp.kind, member=exp.member, parent_id=exp.parent_id,
                      generation=exp.generation)
        if exp.phase == LOST:
            values.update(status="lost", reason=exp.lost_reason, finished_at=exp.lost_at)
            if exp.lost_commit:                        # a child's commit had reached the driver
                values.update(commit=exp.lost_commit, description=exp.lost_description or None)
        for name in _MEMBER_COLUMNS:
            values.pop(name, None)
        return {name: _coerce(values.get(name), kind) for name, kind in columns}


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _coerce(value: Any, kind: str) -> Any:
    """A value in its column's type; missing is NaN for floats, None for the others."""
    if kind == "float":
        return _as_float(value)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False if kind == "bool" else None
    if kind == "int":
        return int(value)
    if kind == "bool":
        return bool(value)
    return str(value)
