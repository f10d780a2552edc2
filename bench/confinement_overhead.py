"""What confinement costs an experiment on this machine (issue 27): the export of the commit, the
evaluator's copy of the fixed side, and bubblewrap around a process, each timed alone.

    python bench/confinement_overhead.py [--repeat 20]

An experiment pays one export (git archive + extract), one copy of prepare/ for the evaluator,
and three sandboxed starts: the training, the model server and a subprocess agent (the built-in
mutator runs in the worker, unsandboxed). Prints the medians and that sum, in milliseconds.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from population import export, gitops, sandbox  # noqa: E402

SANDBOXED_STARTS = 3       # training, model server, subprocess agent


def median_ms(action, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append(1000 * (time.perf_counter() - started))
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="confinement-bench-"))
    repo = gitops.open_run_repo(str(REPO))
    commit = gitops.head_commit(repo)
    dest = work / "export"
    export_ms = median_ms(lambda: export.export_commit(Path(repo.git_dir), commit, dest, "engine/train.py"),
                          args.repeat)
    copy_ms = median_ms(lambda: (shutil.rmtree(work / "scorer", ignore_errors=True),
                                 shutil.copytree(dest / "prepare", work / "scorer" / "prepare")), args.repeat)
    command = [sys.executable, "-c", "pass"]
    plain_ms = median_ms(lambda: subprocess.run(command, check=True), args.repeat)
    rows = {"export (git archive + extract) ms": export_ms, "copy of prepare/ for the evaluator ms": copy_ms,
            "python -c pass, plain ms": plain_ms}
    if sandbox.available():
        (work / "out").mkdir()
        cache = work / "cache"
        cache.mkdir()

        def boxed(mode: str) -> None:
            wrapped = sandbox.sandboxed(command, worktree=work / "out", env={"PATH": "/usr/bin:/bin"}, mode=mode,
                                        data_cache=cache if mode == sandbox.TRAINING else None, readonly=[dest])
            subprocess.run(wrapped.argv, env=wrapped.env, check=True)

        rows["python -c pass, training sandbox ms"] = median_ms(lambda: boxed(sandbox.TRAINING), args.repeat)
        rows["python -c pass, agent sandbox (egress proxy) ms"] = median_ms(lambda: boxed(sandbox.AGENT), args.repeat)
        start_ms = statistics.mean([rows["python -c pass, training sandbox ms"] - plain_ms] * 2 +
                                   [rows["python -c pass, agent sandbox (egress proxy) ms"] - plain_ms])
        rows["per experiment: export + copy + 3 sandboxed starts ms"] = export_ms + copy_ms + SANDBOXED_STARTS * start_ms
    for name, value in rows.items():
        print(f"{name:58s} {value:8.1f}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
