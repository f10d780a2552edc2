"""An experiment in flight, as the driver knows it, and the records it leaves in the store: its
lineage row before the training's figures, its files, its lost event (pure: no Ray, git or files)."""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from population.curves import curve_json
from population.policy import Train, Work
from population.state import PopulationState
from population.usage import TIMELINE_EVERY_S
from population.worker import Prepared


@dataclass
class Flight:
    exp_id: int
    work: Work
    worker: str
    member: str
    parent: str | None
    parent_commit: str
    commit: str                    # what trains (the parent until the child is committed)
    agent: str
    prompt: str = ""
    prepared: Prepared | None = None
    train_blob: str | None = None
    parent_id: int | None = None

    @classmethod
    def start(cls, train: Train, state: PopulationState, exp_id: int, worker: str, agent: str,
              commit_of: Callable[[str], str]) -> Flight:
        """Who trains what. A child: a new member, proposed by the worker's agent from its parent's
        commit, or a lost child's commit trained again without an agent. A baseline or a re-run:
        the member's own commit, with no agent."""
        work = train.work
        if work.kind == "child":
            parent_commit = commit_of(work.parent)
            flight = cls(exp_id, work, worker, state.next_member(), work.parent, parent_commit,
                         work.commit or parent_commit, agent, parent_id=state.first_id(work.parent))
            if work.commit:
                flight.agent = str(state.experiments[work.retrains].started.get("agent") or "none")
                flight.prompt = (f"(no prompt, no agent: the commit {work.commit} of e{work.retrains:04d}, lost "
                                 "after it reached the driver, trains again)\n")
            return flight
        commit = commit_of(work.member)
        parent, parent_id, parent_commit = state.origin(work.member) if work.kind == "rerun" else (None, None, None)
        return cls(exp_id, work, worker, work.member, parent, commit if parent_commit is None else parent_commit,
                   commit, "none", parent_id=parent_id)

    @property
    def kind(self) -> str:
        return self.work.kind

    @property
    def has_own_commit(self) -> bool:
        """A child whose change has reached the driver (before, it stands at its parent's commit)."""
        return self.kind != "child" or (bool(self.commit) and self.commit != self.parent_commit)

    def row(self, status: str, reason: str, state: PopulationState, *, branch: str, budget_s: float) -> dict:
        """The lineage row before the training's figures: a child's agent figures, a baseline's or
        a re-run's description (its member's first)."""
        row = {"commit": self.commit if self.has_own_commit else "", "branch": "", "status": status,
               "reason": reason, "worker": self.worker, "agent": self.agent, "seed": self.work.seed,
               "budget_s": budget_s, "finished_at": None}
        if row["commit"]:
            row["branch"] = branch
        if self.prepared is not None and self.kind == "child":
            row.update(description=self.prepared.description, agent_seconds=self.prepared.agent_seconds,
                       agent_tokens=self.prepared.agent_tokens, agent_cost_usd=self.prepared.agent_cost_usd)
        elif self.kind == "baseline":
            row["description"] = "baseline (the seed, unmodified)"
        elif self.kind == "rerun":
            first = state.experiments.get(state.first_id(self.member))
            row["description"] = f"re-run of {self.member}: " + str(first.row.get("description", "") if first else "")
        return row

    def note_retraining(self, state: PopulationState, subject: Callable[[], str]) -> None:
        """A lost child's commit trained again: its description (the lost one's, else the commit's
        `subject()`) and a transcript that says no agent ran."""
        lost = state.experiments[self.work.retrains]
        self.prepared.description = lost.lost_description or subject()
        self.prepared.transcript = (f"[driver] e{lost.id:04d} ({lost.member}) was lost after its commit {self.commit} "
                                    "reached the driver: that commit, its agent's change, trains again here under a "
                                    "new id; no agent ran.\n")

    def files(self, log: str | None, diff: Callable[[], str], busy_timeline: list | None = None) -> dict:
        """experiments/<id>/: run.log (when it trained), device_busy.json (its device's busy share
        every few seconds, sampled from outside: population/usage.py), curve.json (its loss
        curve from the log's progress lines: population/curves.py), diff.patch against the
        parent (`diff()`, else the worker's own), a child's prompt and transcript."""
        files = {} if log is None else {"run.log": log}
        curve = None if log is None else curve_json(log)
        if curve:
            files["curve.json"] = curve
        if busy_timeline:
            files["device_busy.json"] = json.dumps({"every_s": TIMELINE_EVERY_S,
                                                    "samples": [[t, share] for t, share in busy_timeline]})
        if self.kind != "baseline":
            if self.commit and self.commit != self.parent_commit and self.parent_commit:
                files["diff.patch"] = diff()
            elif self.prepared is not None and self.prepared.diff:
                files["diff.patch"] = self.prepared.diff
        if self.kind == "child":
            files["prompt.md"] = self.prompt
            files["transcript.txt"] = self.prepared.transcript if self.prepared else ""
        return files

    def lost_event(self, reason: str) -> dict:
        """The experiment_lost event; a child's commit and description when its commit had arrived."""
        event = {"type": "experiment_lost", "id": self.exp_id, "reason": reason}
        if self.kind == "child" and self.has_own_commit:
            event["commit"] = self.commit
            description = self.prepared.description if self.prepared else ""
            if description:
                event["description"] = description
        return event


def in_flight_records(state: PopulationState, flights: dict[int, Flight], newest: int) -> list[dict]:
    """What a prompt shows of the work in flight: the newest `newest` started events (not all
    1,000 of a large run), each with its agent's description once the agent has given one."""
    records = []
    for exp in state.in_flight(newest=newest):
        record = dict(exp.started)
        flight = flights.get(exp.id)
        if flight and flight.prepared and flight.prepared.description:
            record["description"] = flight.prepared.description
        records.append(record)
    return records
