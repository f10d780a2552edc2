"""Realistic fake lineage stores for the app's tests and benchmarks.

Builds `runs/<tag>/` directories in the documented format (docs/ARCHITECTURE.md, "The lineage
store") by simulating a small evolution: a baseline measured a few times, then children chosen by
tournament selection, failures of every kind, culling by age, confirming re-runs and a champion.
Nothing here imports the real store writer: the rows are built from the documented schema.

    python tests/storegen.py runs/demo --rows 300 [--metric val_bpc] [--state running]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

FAILURE_WEIGHTS = {"crash": 8, "timeout": 3, "violation": 2, "duplicate": 2, "agent_error": 3, "lost": 1}
FAILURE_REASONS = {
    "crash": "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB",
    "timeout": "training exceeded the 900 s wall-clock limit",
    "violation": "changed prepare/__init__.py (only engine/train.py may change)",
    "duplicate": "same diff as experiment {other}",
    "agent_error": "agent exited with status 1 before writing a description",
    "lost": "worker died (node lost)",
}
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


def _commit(n: int, salt: str = "") -> str:
    return hashlib.sha1(f"{salt}{n}".encode()).hexdigest()


def simulate_rows(n: int, metric: str = "val_bpb", seed: int = 0, workers: int = 8,
                  population: int = 16, tag: str = "demo", t0: float = 1_760_000_000.0) -> list[dict]:
    """`n` experiment rows of a plausible run, in recording order."""
    rng = random.Random(seed)
    base_value = 0.998 if metric == "val_bpb" else 1.25
    floor = base_value * 0.9
    noise = 0.0006
    rows: list[dict] = []
    members: dict[str, dict] = {}          # member -> {first_id, value, commit, born}
    alive: list[str] = []
    culled_at: dict[str, float] = {}

    def add(kind: str, member: str, parent_id, commit: str, parent_commit: str, status: str,
            value: float, generation: int, description: str, reason: str = "") -> dict:
        i = len(rows)
        worker = i % workers
        started = t0 + i * 400.0 / workers + rng.uniform(0, 30)
        ok = status == "ok"
        train_s = rng.uniform(330, 390) if status not in ("agent_error", "duplicate", "violation") else 0.0
        if status == "timeout":
            train_s = 900.0
        row = {
            "id": i, "kind": kind, "member": member, "parent_id": parent_id,
            "commit": commit, "parent_commit": parent_commit,
            "branch": f"population/{tag}/{member}", "status": status, "reason": reason,
            metric: value if ok else float("nan"),
            "training_seconds": 300.1 if ok else float("nan"),
            "total_seconds": train_s if ok else float("nan"),
            "peak_vram_mb": rng.uniform(40_000, 52_000) if ok else float("nan"),
            "mfu_percent": rng.uniform(30, 41) if ok else float("nan"),
            "total_tokens_M": rng.uniform(450, 520) if ok else float("nan"),
            "num_steps": float(rng.randint(880, 990)) if ok else float("nan"),
            "num_params_M": 50.3 if ok else float("nan"),
            "depth": 8.0 if ok else float("nan"),
            "generation": generation,
            "gpu": f"{worker % 8}", "node": f"node-{worker // 8}", "worker": f"w{worker:02d}",
            "agent": rng.choice(AGENTS) if kind == "child" else "",   # only children have an agent
            "agent_seconds": 0.0 if kind != "child" else rng.uniform(40, 400),
            "agent_cost_usd": 0.0 if kind != "child" else round(rng.uniform(0.05, 0.9), 3),
            "agent_tokens": 0 if kind != "child" else rng.randint(5_000, 90_000),
            "train_seconds": train_s,
            "description": description, "seed": 42 if kind != "rerun" else 43 + i,
            "budget_s": 300.0, "started_at": started,
            "finished_at": started + train_s + (0.0 if kind != "child" else rng.uniform(40, 400)),
        }
        rows.append(row)
        return row

    baseline_commit = _commit(0, "base")
    members["m0000"] = {"first_id": 0, "value": base_value, "commit": baseline_commit, "born": 0}
    alive.append("m0000")
    for k in range(min(3, n)):   # the noise floor: the baseline trained several times
        add("baseline" if k == 0 else "rerun", "m0000", None, baseline_commit, "", "ok",
            base_value + rng.gauss(0, noise), 0, "baseline" if k == 0 else "baseline noise re-run")

    champion = "m0000"
    while len(rows) < n:
        contenders = rng.sample(alive, min(4, len(alive)))
        parent = min(contenders, key=lambda m: members[m]["value"])
        pinfo = members[parent]
        idea = rng.choice(IDEAS)
        member = f"m{len(members):04d}"
        commit = _commit(len(rows), tag)
        generation = rows[pinfo["first_id"]]["generation"] + 1
        status = "ok" if rng.random() < 0.8 else rng.choices(
            list(FAILURE_WEIGHTS), weights=list(FAILURE_WEIGHTS.values()))[0]
        headroom = (pinfo["value"] - floor) / (base_value - floor)   # gains shrink near the floor
        value = pinfo["value"] + rng.gauss(0.0015, 0.004) * max(headroom, 0.05)
        reason = FAILURE_REASONS.get(status, "").format(other=max(0, len(rows) - 7))
        row = add("child", member, pinfo["first_id"], commit, pinfo["commit"], status, value,
                  generation, f"{idea[3]} (from {parent})", reason)
        row["_idea"] = idea
        members[member] = {"first_id": row["id"], "value": value, "commit": commit, "born": row["id"]}
        if status != "ok":
            continue
        alive.append(member)
        if value < members[champion]["value"] - noise and len(rows) < n:
            rerun_value = value + rng.gauss(0.0003, noise)
            add("rerun", member, pinfo["first_id"], commit, pinfo["commit"], "ok", rerun_value,
                generation, f"confirm {member} on another seed")
            members[member]["value"] = (value + rerun_value) / 2
            if members[member]["value"] < members[champion]["value"]:
                champion = member
        if len(alive) > population:   # aging: the oldest non-champion dies
            oldest = min((m for m in alive if m != champion), key=lambda m: members[m]["born"])
            alive.remove(oldest)
            culled_at[oldest] = rows[-1]["finished_at"]

    means: dict[str, list[float]] = {}
    for r in rows:
        if r["status"] == "ok":
            means.setdefault(r["commit"], []).append(r[metric])
    for r in rows:
        values = means.get(r["commit"])
        r["metric_mean"] = sum(values) / len(values) if values else float("nan")
        r["alive"] = r["member"] in alive
        r["champion"] = r["member"] == champion
        r["culled_at"] = culled_at.get(r["member"], float("nan"))
    return rows


def lineage_schema(metric: str) -> pa.Schema:
    """The documented lineage.parquet columns and types."""
    f64, i64, s = pa.float64(), pa.int64(), pa.string()
    return pa.schema([
        ("id", i64), ("kind", s), ("member", s), ("parent_id", i64), ("commit", s),
        ("parent_commit", s), ("branch", s), ("status", s), ("reason", s), (metric, f64),
        ("metric_mean", f64), ("training_seconds", f64), ("total_seconds", f64),
        ("peak_vram_mb", f64), ("mfu_percent", f64), ("total_tokens_M", f64), ("num_steps", f64),
        ("num_params_M", f64), ("depth", f64), ("alive", pa.bool_()), ("champion", pa.bool_()),
        ("culled_at", f64), ("generation", i64), ("gpu", s), ("node", s), ("worker", s),
        ("agent", s), ("agent_seconds", f64), ("agent_cost_usd", f64), ("agent_tokens", i64),
        ("train_seconds", f64), ("description", s), ("seed", i64), ("budget_s", f64),
        ("started_at", f64), ("finished_at", f64),
    ])


def _diff(row: dict) -> str:
    name, old, new, _ = row.get("_idea") or ("MATRIX_LR", "0.04", "0.04", "")
    return (f"diff --git a/engine/train.py b/engine/train.py\n"
            f"index {row['parent_commit'][:7]}..{row['commit'][:7]} 100644\n"
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


def write_experiment_files(exp_dir: Path, row: dict, metric: str) -> None:
    exp_dir.mkdir(parents=True, exist_ok=True)
    (exp_dir / "run.log").write_text(_run_log(row, metric))
    if row["kind"] == "child":
        (exp_dir / "diff.patch").write_text(_diff(row))
        (exp_dir / "transcript.txt").write_text(
            f"I read engine/train.py and the lineage.\nIdea: {row['description']}\nEdited the file.\n")
        (exp_dir / "prompt.md").write_text(f"# Experiment {row['id']}\nParent: {row['parent_id']}\n")


def write_store(run_dir: Path, rows: list[dict], metric: str = "val_bpb", state: str = "finished",
                files_for: int | None = None, tag: str = "demo", task: str | None = None) -> Path:
    """Write run.json, lineage.parquet, results.tsv, events.jsonl and experiment files.

    `files_for` limits the experiment directories to the first N ids (large stores)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    champion = next((r["id"] for r in rows if r["champion"] and r["kind"] != "rerun"), None)
    meta = {"tag": tag, "task": task or ("enwik8" if metric == "val_bpc" else "climbmix"),
            "metric": metric, "lower_is_better": True, "budget_s": 300, "workers": 8,
            "noise_std": 0.0006, "champion_id": champion, "state": state,
            "created_at": rows[0]["started_at"] if rows else 1_760_000_000.0,
            "args": {"workers": 8, "population": 16}}
    (run_dir / "run.json").write_text(json.dumps(meta, indent=2))
    if not rows:
        return run_dir
    schema = lineage_schema(metric)
    frame = pd.DataFrame([{k: r.get(k) for k in schema.names} for r in rows])
    pq.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False),
                   run_dir / "lineage.parquet")
    with open(run_dir / "results.tsv", "w") as f:
        f.write(f"commit\t{metric}\tmemory_gb\tstatus\tdescription\n")
        for r in rows:
            ok = r["status"] == "ok"
            status = ("keep" if r["champion"] else "discard") if ok else "crash"
            f.write(f"{r['commit'][:7]}\t{r[metric] if ok else 0.0:.6f}\t"
                    f"{(r['peak_vram_mb'] / 1024) if ok else 0.0:.1f}\t{status}\t{r['description']}\n")
    with open(run_dir / "events.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps({"type": "result", "id": r["id"], "member": r["member"],
                                "status": r["status"], metric: r[metric] if r["status"] == "ok" else None}) + "\n")
    for r in rows[: files_for if files_for is not None else len(rows)]:
        write_experiment_files(run_dir / "experiments" / str(r["id"]), r, metric)
    return run_dir


def make_run(run_dir: Path, n: int = 40, metric: str = "val_bpb", state: str = "finished",
             seed: int = 0, files_for: int | None = None) -> Path:
    """A normal run of `n` experiments."""
    return write_store(run_dir, simulate_rows(n, metric, seed, tag=run_dir.name), metric, state,
                       files_for, tag=run_dir.name)


def make_empty_run(run_dir: Path, state: str = "running") -> Path:
    """A run that has just started: run.json only."""
    return write_store(run_dir, [], state=state, tag=run_dir.name)


def make_corrupt_run(run_dir: Path, what: str = "parquet", n: int = 12) -> Path:
    """A crashed or half-written run: `what` is parquet (garbage bytes), missing_parquet,
    events (torn last line) or run_json (unparseable)."""
    make_run(run_dir, n)
    if what == "parquet":
        (run_dir / "lineage.parquet").write_bytes(b"PAR1\x00\x01 half-written \xff")
    elif what == "missing_parquet":
        (run_dir / "lineage.parquet").unlink()
    elif what == "events":
        with open(run_dir / "events.jsonl", "a") as f:
            f.write('{"type": "result", "id": 99, "sta')
    elif what == "run_json":
        (run_dir / "run.json").write_text('{"tag": "x", "metric": ')
    else:
        raise ValueError(f"unknown corruption {what!r}")
    return run_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a fake lineage store for the app.")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--metric", choices=("val_bpb", "val_bpc"), default="val_bpb")
    parser.add_argument("--state", choices=("running", "stopped", "finished"), default="finished")
    parser.add_argument("--files-for", type=int, default=None, help="experiment dirs for the first N only")
    args = parser.parse_args(argv)
    if args.rows < 0:
        print("error: --rows must be >= 0", file=sys.stderr)
        return 2
    if args.rows == 0:
        make_empty_run(args.run_dir, args.state)
    else:
        make_run(args.run_dir, args.rows, args.metric, args.state, files_for=args.files_for)
    print(f"wrote {args.rows} experiments to {args.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
