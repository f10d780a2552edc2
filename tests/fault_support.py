"""Helpers of the fault-injection suite (tests/test_faults.py); no tests here.

- FAULT_TRAINS: train files that fail the ways trainings fail (syntax, import, OOM kill, NaN...).
- A scripted agent: `python fault_support.py agent PLAN_DIR` takes the next step of a plan
  (files `NN-name.json` in PLAN_DIR, consumed in name order) and does it in its worktree: write a
  train file, hang, crash, edit forbidden files, leave a git lock, or wait to have its worker killed.
  It writes `.agent/description` = the step's name, so each experiment's row says which fault it was.
- A `sitecustomize.py` that, put on a `python -m population` subprocess's PYTHONPATH, stops the
  driver at a stage of an experiment (just before or just after the Nth journal event of a type)
  and waits there to be killed: the test sees the marker file, then SIGKILLs it.
- `assert_nothing_lost_or_twice`: the journal, lineage.parquet and results.tsv agree, and every
  experiment counts exactly once (finished, or lost and its work run again).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

FAULT_TRAINS = {
    "syntax-error": "def broken(:\n    pass\n",
    "import-error": "import numpy_that_does_not_exist_anywhere\n",
    "oom-sigkill": "import os, signal\nprint('allocating 80 GiB', flush=True)\nos.kill(os.getpid(), signal.SIGKILL)\n",
    "oom-exit-137": "import sys\nprint('torch.OutOfMemoryError: CUDA out of memory', flush=True)\nsys.exit(137)\n",
    "nan-loss": "print('step 1/1 loss nan')\nprint('---')\nprint('val_bpb:          nan')\nprint('training_seconds: 0.1')\n",
    "no-summary": "print('step 1/1')\nprint('training went fine, then forgot to print its summary')\n",
    "garbage-log": ("import sys\nsys.stdout.buffer.write(b'\\x00\\xff\\xfe binary junk \\x80\\x81\\n---\\n'\n"
                    "                     b'val_bpb: banana\\ntraining_seconds: \\x00\\x00\\n\\x1b[31m\\xc3\\x28\\n')\n"),
}

# A train file the fake seed (test_driver_support.FAKE_TRAIN) turns into with a better LEARNING_RATE.
BETTER_LR = "LEARNING_RATE = 0.03"


# ---------------------------------------------------------------- plans for the scripted agent

def write_plan(plan_dir: Path, steps: list[tuple[str, dict]]) -> Path:
    """Steps (name, {"action": ..., ...}) in order."""
    plan_dir.mkdir(parents=True, exist_ok=True)
    for index, (name, step) in enumerate(steps):
        (plan_dir / f"{index:02d}-{name}.json").write_text(json.dumps({"name": name, **step}))
    return plan_dir


def agent_spec(plan_dir: Path) -> str:
    return f"command:{sys.executable} {Path(__file__).resolve()} agent {plan_dir}"


def _take_step(plan_dir: Path) -> dict | None:
    done = plan_dir / "done"
    done.mkdir(exist_ok=True)
    for path in sorted(plan_dir.glob("*.json")):
        try:
            os.rename(path, done / path.name)       # atomic: two agents never take one step
        except FileNotFoundError:
            continue
        return json.loads((done / path.name).read_text())
    return None


def run_agent(plan_dir: Path) -> int:
    """The scripted agent's main (cwd: its worktree)."""
    step = _take_step(plan_dir) or {"name": "plan-exhausted", "action": "train", "train": None}
    worktree = Path.cwd()
    (worktree / ".agent").mkdir(exist_ok=True)
    (worktree / ".agent" / "description").write_text(step["name"])
    train = worktree / "engine" / "train.py"
    action = step["action"]
    if action == "train":
        text = step.get("train")
        train.write_text(text if text is not None else train.read_text() + f"# {time.time()}\n")
    elif action == "set":
        lines = [step["line"] if line.startswith(step["line"].split("=")[0]) else line
                 for line in train.read_text().splitlines()]
        train.write_text("\n".join(lines) + "\n")
    elif action == "hang":
        time.sleep(600)
    elif action == "crash":
        print("fault agent: segmentation fault (core dumped)", file=sys.stderr)
        return 3
    elif action == "forbidden":
        train.write_text(train.read_text().replace("DEPTH = 8", "DEPTH = 9"))
        (worktree / "prepare" / "__init__.py").write_text("MAX_SEQ_LEN = 1  # cheat\n")
        (worktree / "program.md").write_text("new rules\n")
        (worktree / "evil.py").write_text("print('escape')\n")
    elif action == "git-lock":
        train.write_text(train.read_text().replace("DEPTH = 8", "DEPTH = 7"))
        git_dir = Path((worktree / ".git").read_text().split(":", 1)[1].strip())    # a worktree's .git file
        (git_dir / "index.lock").write_text("")
    elif action == "wait-for-kill":
        Path(step["pid_file"]).write_text(f"{os.getppid()} {os.getpid()}")   # the worker actor, me
        time.sleep(600)
    else:
        raise SystemExit(f"unknown action {action!r}")
    return 0


# ---------------------------------------------------------------- stopping the driver at a stage

SITECUSTOMIZE = '''\
"""Test-only fault hook (tests/fault_support.py): stop at a journal event and wait to be killed."""
import os, time
_stage = os.environ.get("AUTORESEARCH_FAULT_STAGE")       # before|after:<event type>:<nth>
if _stage:
    from population import store as _store
    _when, _type, _nth = _stage.split(":")
    _seen = [0]
    _append = _store.RunStore.append

    def _wait_to_be_killed():
        with open(os.environ["AUTORESEARCH_FAULT_MARKER"], "w") as f:
            f.write(str(os.getpid()))
        while True:
            time.sleep(1)

    def append(self, event):
        hit = event.get("type") == _type and _seen[0] + 1 == int(_nth)
        if event.get("type") == _type:
            _seen[0] += 1
        if hit and _when == "before":
            _wait_to_be_killed()
        _append(self, event)
        if hit and _when == "after":
            _wait_to_be_killed()

    _store.RunStore.append = append
'''


def write_sitecustomize(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return directory


def git_hanging_on_ref(bin_dir: Path, repo: Path, ref: str, marker: Path) -> str:
    """A `git` for the front of PATH that, the first time a command is about to move `ref`
    (update-ref), takes git's lock of that ref as git would, writes `marker` and hangs: the driver
    is inside `git update-ref` when the test kills it. (A reference-transaction hook did this
    before every git run went through the confinement, which switches hooks off.) Returns the
    PATH to use."""
    real_git = shutil.which("git")
    lock = repo / ".git" / f"{ref}.lock"
    bin_dir.mkdir(parents=True, exist_ok=True)
    wrapper = bin_dir / "git"
    wrapper.write_text(f"""#!/bin/sh
case " $* " in
  *" update-ref {ref} "*)
    if [ ! -e "{marker}" ]; then
      mkdir -p "{lock.parent}" && : > "{lock}"
      echo $$ > "{marker}"
      sleep 600
    fi;;
esac
exec "{real_git}" "$@"
""")
    wrapper.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ.get('PATH', os.defpath)}"


# ---------------------------------------------------------------- the store's invariants

def journal(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]


def assert_nothing_lost_or_twice(run_dir: Path, state: str = "finished") -> list[dict]:
    """Every experiment once: started once, then exactly one of finished or lost; each lost one's
    work started again later (same kind, same member for baselines and re-runs) and finished
    (in a stopped run, what the stop itself marked lost waits for --resume).
    lineage.parquet and results.tsv hold one row per experiment, agreeing with the journal.
    Returns the journal."""
    import pyarrow.parquet as pq

    events = journal(run_dir)
    started = {e["id"]: e for e in events if e["type"] == "experiment_started"}
    started_ids = [e["id"] for e in events if e["type"] == "experiment_started"]
    assert started_ids == sorted(set(started_ids)) == list(range(len(started_ids))), started_ids
    ends = Counter(e["id"] for e in events if e["type"] in ("experiment_finished", "experiment_lost"))
    assert ends == Counter({i: 1 for i in started_ids}), f"an experiment ended twice or never: {ends}"
    finished = {e["id"]: e["row"] for e in events if e["type"] == "experiment_finished"}
    lost_reason = {e["id"]: e.get("reason", "") for e in events if e["type"] == "experiment_lost"}
    for exp_id, reason in sorted(lost_reason.items()):
        if state == "stopped" and reason.startswith("driver stopped"):
            continue                 # lost at the stop: a --resume queues it again
        was = started[exp_id]
        again = [i for i in finished if i > exp_id and started[i]["kind"] == was["kind"]
                 and (was["kind"] == "child" or started[i]["member"] == was["member"])]
        assert again, f"the work of lost experiment {exp_id} ({was['kind']} {was['member']}) never ran again"

    lineage = pq.read_table(run_dir / "lineage.parquet").to_pandas()
    assert list(lineage["id"]) == started_ids
    for row in lineage.itertuples():
        want = finished[row.id]["status"] if row.id in finished else "lost"
        assert row.status == want, (row.id, row.status, want)
        assert row.member == started[row.id]["member"] and row.kind == started[row.id]["kind"]
    tsv = (run_dir / "results.tsv").read_text().splitlines()
    assert len(tsv) == 1 + len(started_ids)
    assert json.loads((run_dir / "run.json").read_text())["state"] == state
    assert events[-1]["type"] == "run_state" and events[-1]["state"] == state
    return events


def rows_by_description(events: list[dict]) -> dict[str, dict]:
    return {e["row"].get("description", ""): e["row"] | {"id": e["id"]}
            for e in events if e["type"] == "experiment_finished"}


if __name__ == "__main__" and sys.argv[1:2] == ["agent"]:
    raise SystemExit(run_agent(Path(sys.argv[2])))
