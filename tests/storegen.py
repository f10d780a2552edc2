"""Synthetic lineage stores for the app's tests and benchmarks, written the way the driver writes them.

A small stand-in for population/driver.py without Ray, git or trainings: it makes the driver's
journal events (`experiment_started`, `experiment_finished`, `experiment_lost`, `noise`,
`champion`, `member_culled`, `run_state`) for a plausible evolution and decides with the driver's
own code: the noise from `estimate_noise` over the seed's baseline runs (each noise run is a
`kind = baseline` row of member m0000, as the driver writes them), parents by tournament over the
posterior estimates, promotions by `posterior_choice`, culls by `choose_culls` (age), all on a
`PopulationState` fed the same events. The journal is signed by `RunStore.append`; lineage.parquet
and results.tsv come from `PopulationState.lineage_rows()` through `RunStore.write_tables`, so the
tables are exactly what the driver would derive from that journal.

Failures of every kind occur (crash, timeout, violation, duplicate, agent_error) and lost
experiments (`experiment_lost`) whose work is queued again under the next id. `holdout=True` adds
what the trusted evaluation will add to each row: `holdout_<bpb|bpc>` (a hidden holdout's score)
and `reported_<metric>` (what the train file printed itself); `overfit` in [0, 1] makes that share
of each member's validation gain over the seed not show on the holdout.

    python tests/storegen.py runs/demo --rows 300 [--metric val_bpc] [--state running] [--holdout]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
import types
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from population import store as store_module  # noqa: E402
from population.selection import choose_culls, estimate_noise, posterior_choice, tournament_select  # noqa: E402
from population.state import PopulationState, holdout_column  # noqa: E402
from population.store import RunStore  # noqa: E402

FAILURE_WEIGHTS = {"crash": 8, "timeout": 3, "violation": 2, "duplicate": 2, "agent_error": 3}
FAILURE_REASONS = {
    "crash": "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB",
    "timeout": "training exceeded the 900 s wall-clock limit",
    "violation": "changed prepare/__init__.py (only engine/train.py may change)",
    "duplicate": "same diff as experiment {other}",
    "agent_error": "agent exited with status 1 before writing a description",
}
LOST_REASON = "worker died (node lost)"
IDEAS = [
    ("MATRIX_LR", "0.04", "0.05", "raise matrix lr to 0.05"),
    ("WARMDOWN_RATIO", "0.5", "0.6", "longer warmdown (60%)"),
    ("DEPTH", "8", "10", "depth 10"),
    ("ASPECT_RATIO", "64", "56", "narrower model, aspect 56"),
    ("WEIGHT_DECAY", "0.2", "0.1", "halve weight decay"),
    ("DEVICE_BATCH_SIZE", "128", "96", "smaller device batch"),
    ("EMBEDDING_LR", "0.6", "0.8", "embedding lr 0.8"),
    ("WINDOW_PATTERN", '"SSSL"', '"SSLL"', "more long-window layers"),
    ("HEAD_DIM", "128", "64", "head dim 64, more heads"),
    ("ADAM_BETAS", "(0.8, 0.95)", "(0.9, 0.95)", "adam beta1 0.9"),
]
AGENTS = ["claude:claude-sonnet-4-5", "codex:gpt-5-codex", "mutator:random"]
NOISE = 0.0006
CONFIDENCE, MIN_EVIDENCE = 0.95, 2          # the driver's defaults (--promotion-confidence, --confirm-runs)


def _commit(n: int, salt: str = "") -> str:
    return hashlib.sha1(f"{salt}{n}".encode()).hexdigest()


class Evolution:
    """The journal of a plausible run, decided by the driver's selection code."""

    def __init__(self, metric: str, seed: int, workers: int, population: int, noise_runs: int, tag: str,
                 t0: float, holdout: bool, overfit: float, lost_rate: float):
        self.metric, self.tag, self.workers, self.population = metric, tag, workers, population
        self.noise_runs, self.t0, self.holdout, self.overfit, self.lost_rate = noise_runs, t0, holdout, overfit, lost_rate
        self.rng = random.Random(seed)
        self.state = PopulationState(metric, True)
        self.events: list[dict] = []
        self.base = 0.998 if metric == "val_bpb" else 1.25
        self.floor = self.base * 0.9
        self.truth: dict[str, float] = {}          # member -> its true value
        self.commits: dict[str, str] = {}
        self.ideas: dict[int, tuple] = {}         # experiment id -> the idea its diff shows
        self.requeued: list[str] = []             # parents of lost children, tried again next
        self.next_member = 1
        self.parents: dict[str, str] = {}

    def record(self, event: dict) -> None:
        self.events.append(event)
        self.state.apply(event)

    def run(self, n: int, state: str) -> None:
        """`n` experiments, `workers` of them in flight at a time, as the driver runs them: each
        started on the state of the moment, its result recorded `workers` starts later."""
        self.record({"type": "run_state", "state": "running", "time": self.t0})
        in_flight: deque[dict] = deque()
        for exp_id in range(n):
            if exp_id >= self.noise_runs and self.state.noise_std is None:
                while in_flight:                 # children need the seed measured first
                    self._result(in_flight.popleft())
            in_flight.append(self._start_baseline(exp_id) if exp_id < self.noise_runs else self._start_child(exp_id))
            if len(in_flight) >= self.workers:
                self._result(in_flight.popleft())
        cut = min(2, len(in_flight)) if state == "stopped" else 0
        while len(in_flight) > cut:
            self._result(in_flight.popleft())
        for started in in_flight:                # in flight when the driver stopped: --resume re-queues them
            self.record({"type": "experiment_lost", "id": started["id"], "reason": "in flight when the driver stopped",
                         "time": started["time"] + 30})
        if state != "running":
            self.record({"type": "run_state", "state": state, "time": self.events[-1]["time"] + 5})

    # ---- experiments ---------------------------------------------------------------------

    def _when(self, exp_id: int) -> float:
        """Start time: each worker takes the next experiment every ~430 s (agent + training)."""
        return self.t0 + (exp_id // self.workers) * 430.0 + (exp_id % self.workers) * 3.0 + self.rng.uniform(0, 20)

    def _started(self, exp_id: int, kind: str, member: str, parent_id, parent_commit: str, agent: str,
                 seed: int = 42) -> dict:
        event = {"type": "experiment_started", "id": exp_id, "kind": kind, "member": member, "parent_id": parent_id,
                 "parent_commit": parent_commit, "worker": f"w{exp_id % self.workers}", "agent": agent,
                 "seed": seed, "budget_s": 300.0, "node_id": f"node{(exp_id % self.workers) // 8}",
                 "time": self._when(exp_id)}
        self.record(event)
        return event

    def _start_baseline(self, exp_id: int) -> dict:
        self.commits.setdefault("m0000", _commit(0, "seed"))
        self.truth.setdefault("m0000", self.base)
        return self._started(exp_id, "baseline", "m0000", None, self.commits["m0000"], "none", seed=42 + exp_id)

    def _start_child(self, exp_id: int) -> dict:
        parent = self.requeued.pop(0) if self.requeued else None
        if parent is None or not self.state.members[parent].alive:
            parent = tournament_select(self.state.candidates(estimated=True), 4, self.rng).member
        member = f"m{self.next_member:04d}"          # the driver numbers every child it starts
        self.next_member += 1
        started = self._started(exp_id, "child", member, self.state.members[parent].first_id,
                                self.commits[parent], self.rng.choice(AGENTS))
        headroom = max((self.truth[parent] - self.floor) / (self.base - self.floor), 0.05)   # gains shrink near the floor
        self.truth[member] = self.truth[parent] + self.rng.gauss(0.0015, 0.004) * headroom
        self.commits[member] = _commit(exp_id, self.tag)
        self.parents[member] = parent
        return started

    def _result(self, started: dict) -> None:
        exp_id, member = started["id"], started["member"]
        if started["kind"] == "baseline":
            self._finish(started, "ok", self.truth[member], self.commits[member], "baseline (the seed, unmodified)")
            if sum(e.kind == "baseline" and e.phase != "in_flight" for e in self.state.experiments.values()) \
                    == self.noise_runs:
                self._finish_noise()
            return
        if self.rng.random() < self.lost_rate:
            self.record({"type": "experiment_lost", "id": exp_id, "reason": LOST_REASON, "time": started["time"] + 90})
            self.requeued.append(self.parents[member])   # the driver queues the work again (a new id, a new member)
            return
        idea = self.rng.choice(IDEAS)
        self.ideas[exp_id] = idea
        status = "ok" if self.rng.random() < 0.8 else self.rng.choices(
            list(FAILURE_WEIGHTS), weights=list(FAILURE_WEIGHTS.values()))[0]
        self._finish(started, status, self.truth[member], self.commits[member],
                     f"{idea[3]} (from {self.parents[member]})")
        if status == "ok":
            self._judge()
            self._cull()

    def _finish(self, started: dict, status: str, truth: float, commit: str, description: str) -> None:
        exp_id, kind, rng = started["id"], started["kind"], self.rng
        child = kind == "child"
        trained = status in ("ok", "crash", "timeout")
        agent_s = rng.uniform(40, 400) if child else 0.0
        train_s = 900.0 if status == "timeout" else rng.uniform(330, 390) if trained else 0.0
        train_started = started["time"] + agent_s + 2.0
        row = {"commit": commit if status != "duplicate" else "", "branch": f"population/{self.tag}/{started['member']}",
               "status": status, "reason": FAILURE_REASONS.get(status, "").format(other=max(0, exp_id - 7)),
               "worker": started["worker"], "agent": started["agent"], "seed": started["seed"], "budget_s": 300.0,
               "description": description, "gpu": "NVIDIA H100 80GB HBM3", "node": f"node-{started['node_id'][4:]}",
               "train_seconds": train_s, "finished_at": train_started + train_s,
               "cuda_visible_devices": str(int(started["worker"][1:]) % 8), "node_id": started["node_id"],
               "train_started_at": train_started}
        if child:
            row.update(agent_seconds=agent_s, agent_cost_usd=round(rng.uniform(0.05, 0.9), 3),
                       agent_tokens=rng.randint(5_000, 90_000))
        if status == "ok":
            value = truth + rng.gauss(0, NOISE)
            row.update({self.metric: value, "training_seconds": 300.1, "total_seconds": train_s,
                        "peak_vram_mb": rng.uniform(40_000, 52_000), "mfu_percent": rng.uniform(30, 41),
                        "total_tokens_M": rng.uniform(450, 520), "num_steps": float(rng.randint(880, 990)),
                        "num_params_M": 50.3, "depth": 8.0})
            if self.holdout:
                # the part of the gain over the seed that is real shows on the holdout too
                real = truth - self.overfit * (truth - self.base)
                row[holdout_column(self.metric)] = real + 0.004 + rng.gauss(0, NOISE)
                row["reported_" + self.metric] = value + rng.gauss(0, NOISE / 10)
        self.record({"type": "experiment_finished", "id": exp_id, "row": row, "time": row["finished_at"]})

    # ---- the driver's decisions ----------------------------------------------------------

    def _finish_noise(self) -> None:
        when = self.events[-1]["time"]
        sum_squares, dof = self.state.spread()           # the pooled spread, as the driver's policy measures it
        seed = self.state.members["m0000"]
        self.record({"type": "noise", "std": estimate_noise(sum_squares, dof, seed.mean), "time": when})
        self.record({"type": "champion", "member": "m0000", "time": when})

    def _judge(self) -> None:
        best = posterior_choice(self.state.candidates(estimated=True), self.state.champion, self.state.posterior,
                                confidence=CONFIDENCE, min_evidence=MIN_EVIDENCE)
        if best is not None:
            self.record({"type": "champion", "member": best, "time": self.events[-1]["time"]})

    def _cull(self) -> None:
        protect = frozenset({self.state.champion} | self.state.awaiting_confirmation(MIN_EVIDENCE))
        for member in choose_culls(self.state.candidates(estimated=True), self.population, "age", 4, self.rng, protect):
            self.record({"type": "member_culled", "member": member, "time": self.events[-1]["time"]})


# --------------------------------------------------------------------------- writing a store

class _NoFsync(types.ModuleType):
    """`os` for the store while a synthetic journal is written: no fsync (30,000 of them cost
    seconds, and a test store needs no durability); everything else is the real os."""

    def __init__(self):
        super().__init__("os")

    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def fsync(fd):
        return None


def _diff(row: dict, idea: tuple | None) -> str:
    name, old, new, _ = idea or ("MATRIX_LR", "0.04", "0.04", "")
    return (f"diff --git a/engine/train.py b/engine/train.py\n"
            f"index {row['parent_commit'][:7]}..{(row['commit'] or '0' * 7)[:7]} 100644\n"
            f"--- a/engine/train.py\n+++ b/engine/train.py\n@@ -42,7 +42,7 @@\n"
            f" # Hyperparameters\n-{name} = {old}\n+{name} = {new}\n"
            f" TOTAL_BATCH_SIZE = 2**19\n")


def _run_log(row: dict, metric: str) -> str:
    steps = "".join(f"step {s:05d} | loss {3.9 - s / 400:.4f} | dt 321ms\n" for s in range(0, 900, 90))
    if row["status"] != "ok":
        return steps + "Traceback (most recent call last):\n  File \"engine/train.py\", line 512\n" \
            + (row["reason"] or "failed") + "\n"
    return steps + "---\n" + "".join(
        f"{key + ':':<18}{row[key]:.6f}\n" for key in (metric, "training_seconds", "total_seconds",
                                                        "peak_vram_mb", "mfu_percent", "num_steps"))


def write_experiment_files(exp_dir: Path, row: dict, metric: str, idea: tuple | None) -> None:
    """What the driver keeps per experiment (plain writes: a test store needs no atomicity)."""
    exp_dir.mkdir(parents=True, exist_ok=True)
    if row["status"] not in ("lost", "stopped"):
        (exp_dir / "run.log").write_text(_run_log(row, metric))
    if row["kind"] == "child" and row["status"] not in ("lost", "stopped"):
        (exp_dir / "diff.patch").write_text(_diff(row, idea))
        (exp_dir / "transcript.txt").write_text(
            f"I read engine/train.py and the lineage.\nIdea: {row['description']}\nEdited the file.\n")
        (exp_dir / "prompt.md").write_text(f"# Experiment {row['id']}\nParent: {row['parent_id']}\n")


def write_store(run_dir: Path, evolution: Evolution | None, metric: str = "val_bpb", state: str = "finished",
                files_for: int | None = None, tag: str = "demo", task: str | None = None) -> Path:
    """run.json, the signed journal, lineage.parquet and results.tsv (through the real store) and
    experiment files (`files_for`: only for the first N ids, for large stores)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    sim = evolution
    meta = {"tag": tag, "task": task or ("enwik8" if metric == "val_bpc" else "climbmix"), "metric": metric,
            "lower_is_better": True, "budget_s": 300, "workers": sim.workers if sim else 8,
            "noise_std": sim.state.noise_std if sim else None, "champion_id": None, "state": state,
            "created_at": sim.t0 if sim else 1_760_000_000.0, "seed_commit": _commit(0, "seed"),
            "device": "cuda", "args": {"workers": sim.workers if sim else 8,
                                       "population_size": sim.population if sim else 16, "selection": "posterior"}}
    store = RunStore.create(run_dir, meta)
    if sim is None:
        return run_dir
    real_os, store_module.os = store_module.os, _NoFsync()
    try:
        for event in sim.events:
            store.append(event)
        rows = sim.state.lineage_rows()
        store.write_tables(rows, metric, lower_is_better=True)
    finally:
        store_module.os = real_os
    champion = sim.state.members.get(sim.state.champion) if sim.state.champion else None
    store.update_meta(champion_id=champion.first_id if champion else None)
    for row in rows[: files_for if files_for is not None else len(rows)]:
        write_experiment_files(run_dir / "experiments" / str(row["id"]), row, metric, sim.ideas.get(row["id"]))
    return run_dir


def evolve(n: int, metric: str = "val_bpb", seed: int = 0, workers: int = 8, population: int = 16,
           noise_runs: int = 3, tag: str = "demo", state: str = "finished", holdout: bool = False,
           overfit: float = 0.0, lost_rate: float = 0.01, t0: float = 1_760_000_000.0) -> Evolution:
    """The journal of `n` experiments (noise runs first)."""
    sim = Evolution(metric, seed, workers, population, min(noise_runs, n), tag, t0, holdout, overfit, lost_rate)
    sim.run(n, state)
    return sim


def make_run(run_dir: Path, n: int = 40, metric: str = "val_bpb", state: str = "finished", seed: int = 0,
             files_for: int | None = None, **kw) -> Path:
    """A run of `n` experiments; `kw` goes to `evolve` (holdout, overfit, lost_rate, workers, ...).
    Rewriting an existing store (a live run that grew) replaces its files."""
    if (run_dir / "run.json").exists():
        for name in ("run.json", "events.jsonl", ".journal.key"):
            (run_dir / name).unlink(missing_ok=True)
    sim = evolve(n, metric, seed, tag=run_dir.name, state=state, **kw)
    return write_store(run_dir, sim, metric, state, files_for, tag=run_dir.name)


def make_empty_run(run_dir: Path, state: str = "running") -> Path:
    """A run that has just started: run.json and an empty journal."""
    return write_store(run_dir, None, state=state, tag=run_dir.name)


def make_corrupt_run(run_dir: Path, what: str = "parquet", n: int = 12) -> Path:
    """A crashed or half-written run: `what` is parquet (garbage bytes), missing_parquet,
    events (torn last line), run_json (unparseable) or forged (a journal line edited by another
    process, which the journal's signature catches)."""
    make_run(run_dir, n, lost_rate=0.0)
    if what == "parquet":
        (run_dir / "lineage.parquet").write_bytes(b"PAR1\x00\x01 half-written \xff")
    elif what == "missing_parquet":
        (run_dir / "lineage.parquet").unlink()
    elif what == "events":
        with open(run_dir / "events.jsonl", "a") as f:
            f.write('{"type": "experiment_finished", "id": 99, "sta')
    elif what == "run_json":
        (run_dir / "run.json").write_text('{"tag": "x", "metric": ')
    elif what == "forged":
        lines = (run_dir / "events.jsonl").read_text().splitlines(keepends=True)
        at = next(i for i, line in enumerate(lines) if '"type":"champion"' in line)
        lines[at] = lines[at].replace('"member":"m0000"', '"member":"m0001"')
        (run_dir / "events.jsonl").write_text("".join(lines))
    else:
        raise ValueError(f"unknown corruption {what!r}")
    return run_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a synthetic lineage store for the app.")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--metric", choices=("val_bpb", "val_bpc"), default="val_bpb")
    parser.add_argument("--state", choices=("running", "stopped", "finished"), default="finished")
    parser.add_argument("--files-for", type=int, default=None, help="experiment dirs for the first N only")
    parser.add_argument("--holdout", action="store_true", help="add holdout_* and reported_* columns")
    args = parser.parse_args(argv)
    if args.rows < 0:
        print("error: --rows must be >= 0", file=sys.stderr)
        return 2
    if args.rows == 0:
        make_empty_run(args.run_dir, args.state)
    else:
        make_run(args.run_dir, args.rows, args.metric, args.state, files_for=args.files_for, holdout=args.holdout)
    print(f"wrote {args.rows} experiments to {args.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
