"""The driver's process around the run: its checks before anything is recorded, the run's
metadata, its signal handlers, a git error in one line (I/O: git, files, signals)."""
from __future__ import annotations

import signal
import threading
import time

from population import gitops, readiness
from population.config import RunConfig
from population.fleet import DriverError
from population.training import EVALUATOR_FILE
from prepare.tasks import Task

PROGRAM_FILE = "program.md"


def program_md(git, repo, seed_commit: str) -> str:
    try:
        return git.file_text(repo, seed_commit, PROGRAM_FILE)
    except gitops.git.GitCommandError:
        raise DriverError(f"the seed commit {seed_commit[:9]} has no {PROGRAM_FILE}; "
                          "commit the agents' instructions first") from None


def check_evaluator(git, repo, seed_commit: str) -> None:
    """The metric comes from the seed's fixed side: no prepare/trusted_eval.py, no run."""
    if git.file_blob(repo, seed_commit, EVALUATOR_FILE) is None:
        raise DriverError(f"the seed commit {seed_commit[:9]} has no {EVALUATOR_FILE}: the metric must be "
                          "computed on the fixed side (see docs/ARCHITECTURE.md, 'The trusted evaluation')")


def check_agents(specs: list[str], options) -> None:
    from population.agents import make_agent   # raises AgentSpecError (one line) for a bad spec
    for index, spec in enumerate(specs):
        make_agent(spec, **options(index))


def check_data_here(git, repo, seed_commit: str, task: Task, all_here) -> None:
    """Refuse to start, before anything is recorded, when every worker would train on this node
    (`all_here()`) and its cache lacks what the seed's train file reads. On a cluster the head may
    hold no data: each worker's node then checks, and prepares, its own (fleet.check_ready)."""
    from prepare.cache import cache_dir
    missing = readiness.missing_files(task, cache_dir())
    if not missing or not readiness.reads_prepared_data(git.file_text(repo, seed_commit, task.train_file)):
        return
    if all_here():
        raise DriverError(f"no prepared data for task {task.name}: {missing[0]} is missing; "
                          f"run `{readiness.prepare_command(task)}` first, or point "
                          "AUTORESEARCH_CACHE at a prepared cache")


def seed_fingerprint(git, repo, store_dir, seed_commit: str) -> str:
    """prepare/'s fingerprint in a fresh checkout of the seed (what every worktree must match)."""
    from population import guards
    path = store_dir / ".seed-check"
    git.add_detached_worktree(repo, path, seed_commit)
    try:
        return guards.tree_fingerprint(path, "prepare")
    finally:
        git.remove_worktree(repo, path)


def cache_fingerprint(task: Task) -> str | None:
    """The data cache's fingerprint on this node, that every worker's node must match; None
    (nothing to compare with) when this node has no prepared cache for the task."""
    from prepare.cache import cache_dir
    if readiness.missing_files(task, cache_dir()):
        return None
    return readiness.cache_fingerprint(task, cache_dir())


def run_meta(config: RunConfig, task: Task, seed_commit: str, repo, now: float | None = None) -> dict:
    """run.json of a new run."""
    return {"tag": config.tag, "task": config.task, "metric": task.metric,
            "lower_is_better": task.lower_is_better, "budget_s": config.budget_s,
            "workers": config.workers, "noise_std": None, "champion_id": None, "state": "running",
            "created_at": time.time() if now is None else now, "seed_commit": seed_commit, "device": config.device,
            "repo": str(repo.working_tree_dir),
            "args": {k: v for k, v in vars(config).items() if k not in ("workdir",)}}


def git_error_line(error) -> str:
    """`git <subcommand> failed: <git's first line>` from a GitCommandError's multi-line text."""
    command = error.command if isinstance(error.command, (list, tuple)) else str(error.command).split()
    stderr = str(error.stderr or "").strip().removeprefix("stderr:").strip().strip("'").strip()
    said = next((line.strip() for line in stderr.splitlines() if line.strip()), f"exit code {error.status}")
    return f"git {command[1] if len(command) > 1 else ''} failed: {said}"


def install_signal_handlers(handler) -> dict:
    """SIGINT and SIGTERM to `handler` (main thread only); returns what to restore."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def restore_signal_handlers(old: dict) -> None:
    for sig, handler in old.items():
        signal.signal(sig, handler)
