"""The driver's process around the run: its checks before anything is recorded, the run's
metadata, its signal handlers, a git error in one line (I/O: git, files, signals)."""
from __future__ import annotations

import logging
import shutil
import signal
import threading
import time
from pathlib import Path

from population import gitops, readiness
from population.config import RunConfig, changed_settings, settings_of, with_run_settings
from population.fleet import DriverError
from population.policy import SEED_MEMBER
from population.state import PopulationState
from population.training import EVALUATOR_FILE
from prepare.tasks import Task, get_task

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


def check_sandbox(wanted: bool) -> None:
    from population import sandbox
    if wanted and not sandbox.available():
        raise DriverError(f"{sandbox.probe()}; or pass --no-sandbox to run trainings and agents unconfined "
                          "(README, 'Security')")


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
    try:
        git.add_detached_worktree(repo, path, seed_commit)
        return guards.tree_fingerprint(path, "prepare")
    finally:                              # also when the checkout failed half-way
        git.remove_worktree(repo, path)


def cache_fingerprint(task: Task) -> str | None:
    """The data cache's fingerprint on this node, that every worker's node must match; None
    (nothing to compare with) when this node has no prepared cache for the task."""
    from prepare.cache import cache_dir
    if readiness.missing_files(task, cache_dir()):
        return None
    return readiness.cache_fingerprint(task, cache_dir())


def run_meta(config: RunConfig, task: Task, seed_commit: str, repo, now: float | None = None) -> dict:
    """run.json of a new run: `args` as it started (never rewritten), `settings` in force (with
    `settings_history`, the changes --resume --set made since)."""
    return {"tag": config.tag, "task": config.task, "metric": task.metric,
            "lower_is_better": task.lower_is_better, "budget_s": config.budget_s,
            "workers": config.workers, "noise_std": None, "champion_id": None, "state": "running",
            "created_at": time.time() if now is None else now, "seed_commit": seed_commit, "device": config.device,
            "repo": str(repo.working_tree_dir), "journal_events": 0,
            "settings": settings_of(config), "settings_history": [],
            "args": {k: v for k, v in vars(config).items() if k not in ("workdir", "explicit", "set_values")}}


# ---------------------------------------------------------------- where the run lives, and what it holds

def runs_dir(given: str | None, repo) -> Path:
    """The folder of the run stores, absolute: --runs-dir as given (relative to the current folder),
    by default runs/ at the run repository's root, whatever folder inside it the driver runs in.
    Its parent must exist: a typo does not grow a tree of folders."""
    path = (Path(given).expanduser() if given else Path(repo.working_tree_dir) / "runs").absolute()
    if not path.parent.is_dir():
        raise DriverError(f"--runs-dir {given}: its parent folder {path.parent} does not exist; create it or "
                          "pick another --runs-dir")
    if path.exists() and not path.is_dir():
        raise DriverError(f"--runs-dir {given or path}: {path} is a file, not a folder")
    return path


def check_new_run(git, repo, run_dir: Path, tag: str) -> None:
    """A new run starts from nothing: no store under its tag, and no branches of an earlier run under
    this tag whose store is gone (deleted by hand), which the new run's would mix with."""
    if (run_dir / "run.json").exists():
        raise DriverError(f"run {tag!r} already exists in {run_dir.parent}; "
                          "pass --resume to continue it or pick another --run")
    found = [name for name in (gitops.member_branch(tag, SEED_MEMBER), gitops.best_branch(tag))
             if git.ref_commit(repo, name)]
    if found:
        raise DriverError(f"branch {found[0]} already exists (an earlier run under the tag {tag!r}, whose store is "
                          f"gone): pick another --run, or remove its branches with `python -m population clean "
                          f"{tag} --all --yes`")


def check_resumable(store, state: PopulationState, branches: dict[str, str], tag: str) -> None:
    """--resume goes on only when the journal accounts for everything the run recorded elsewhere:
    the events run.json counted when the tables were last written, the champion it names, the
    rows of lineage.parquet and results.tsv (ids and commits), and the run's branches. Otherwise
    a DriverError (one line) before anything is written: resuming would start over, rewrite the
    tables from less than they hold, or move branches that hold recorded work."""
    where = f"the journal {store.journal_path}"
    fix = "; --resume will not continue a run from less than it recorded (restore the journal from a backup)"
    meta = store.meta
    removed = (meta.get("cleaned") or {}).get("branches_removed")
    if removed:
        raise DriverError(f"run {tag} was cleaned (python -m population clean): the branches of {removed} members are "
                          f"gone, so it cannot go on; start a new run from its champion, population/{tag}/best")
    counted = meta.get("journal_events") or 0
    if store.event_count < counted:
        raise DriverError(f"{where} holds {store.event_count} events but run.json counted {counted} when the "
                          f"tables were written: events were cut off its end{fix}")
    champion = meta.get("champion_id")
    if champion is not None and champion not in state.experiments:
        raise DriverError(f"run.json names experiment {champion} as the champion's, which {where} lacks{fix}")
    rows = {row["id"]: row.get("commit") or "" for row in state.lineage_rows()}
    for exp_id, commit in store.lineage_ids().items():
        if rows.get(exp_id) != commit:
            what = "lacks" if exp_id not in rows else f"records commit {rows[exp_id][:9] or 'none'} for"
            raise DriverError(f"lineage.parquet holds experiment {exp_id} (commit {commit[:9] or 'none'}), "
                              f"which {where} {what}{fix}")
    ordered = list(rows.values())
    for number, short in enumerate(store.results_commits()):
        if number >= len(ordered) or not ordered[number].startswith(short):
            raise DriverError(f"results.tsv line {number + 2} (commit {short or 'none'}) is not in {where}{fix}")
    for branch, commit in sorted(branches.items()):
        member = branch.rsplit("/", 1)[-1]
        if member in ("best", "m0000"):
            continue
        if not state.experiment_ids(member):
            raise DriverError(f"branch {branch} holds a member that {where} never started{fix}")
        known = state.members[member].commit if member in state.members else next(
            (state.experiments[i].row.get("commit") for i in state.experiment_ids(member)
             if state.experiments[i].row.get("commit")), None)
        if known and commit != known:
            raise DriverError(f"branch {branch} is at {commit[:9]} but {where} records {known[:9]} for {member}{fix}")
    best = branches.get(gitops.best_branch(tag))
    if best and state.champion is None:
        raise DriverError(f"branch {gitops.best_branch(tag)} exists but {where} records no champion{fix}")


def resumed_state(store, config: RunConfig, git, repo) -> tuple[RunConfig, dict, PopulationState]:
    """A locked run's settings (with the changes --resume --set asks for: field -> [old, new]) and
    its journal replayed, after checking that the journal accounts for everything the store and
    the branches hold (check_resumable): nothing is written before."""
    events = store.events()
    changes = [event.get("changes") or {} for event in events if event.get("type") == "settings_changed"]
    config, asked = changed_settings(with_run_settings(config, store.meta, changes))
    seed_commit = store.meta["seed_commit"]
    if not git.has_commit(repo, seed_commit):
        raise DriverError(f"the run's seed commit {seed_commit[:9]} is not in {repo.working_tree_dir}")
    task = get_task(config.task)
    state = PopulationState.replay(events, task.metric, task.lower_is_better)
    check_resumable(store, state, git.list_branches(repo, f"population/{config.tag}/"), config.tag)
    return config, asked, state


def arrived_commits(git, repo, tag: str, state: PopulationState) -> dict[int, str]:
    """The children in flight when the driver stopped whose commit had reached this repository
    (their branch holds it, unlike their parent's): the policy trains these commits again."""
    arrived = {}
    for exp in state.in_flight():
        if exp.kind != "child":
            continue
        commit = exp.started.get("commit") or git.ref_commit(repo, gitops.member_branch(tag, exp.member))
        if commit and commit != exp.started.get("parent_commit"):
            arrived[exp.id] = commit
    return arrived


def trained_blobs(git, repo, state: PopulationState, train_file: str) -> dict[str, str]:
    """The train file's blob of every finished experiment's commit -> the first member that had it
    (a child whose file equals one of these is a duplicate)."""
    blobs: dict[str, str] = {}
    for exp in state.experiments.values():
        commit = exp.row.get("commit") if exp.phase == "finished" else None
        blob = git.file_blob(repo, commit, train_file) if commit else None
        if blob:
            blobs.setdefault(blob, exp.member)
    return blobs


def sync_worktrees(git, repo, tag: str, state: PopulationState, members_dir: Path) -> None:
    """A worktree for each living member, none for a culled one."""
    for member in state.members.values():
        path = members_dir / member.name
        if member.alive:
            git.add_worktree(repo, path, gitops.member_branch(tag, member.name))
        else:
            git.remove_worktree(repo, path)


def undo_start(git, repo, tag: str, made: dict[str, bool], run_dir: Path | None, runs_dir: Path | None) -> None:
    """A start that failed before the run began leaves nothing behind: what it made (`made`: a new
    run's folders, its m0000 branch) goes; the seed check's worktree is gone already."""
    if made.get("m0000"):
        git.delete_branch(repo, gitops.member_branch(tag, SEED_MEMBER))
    if made.get("run_dir") and run_dir is not None:
        shutil.rmtree(run_dir, ignore_errors=True)
    if made.get("runs_dir") and runs_dir is not None:
        try:
            runs_dir.rmdir()             # only when empty
        except OSError:
            pass


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


RAY_TOKEN_NOTICE = "Token authentication is enabled for this Ray cluster"   # Ray's notice at every local start


class _WithoutRayNotice(logging.Filter):
    """Drops Ray's notice that a local cluster uses token authentication (information, not a
    problem: the driver's own Ray); every other record of that logger passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(RAY_TOKEN_NOTICE)


def quiet_ray_notices() -> None:
    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _WithoutRayNotice) for f in logger.filters):
        logger.addFilter(_WithoutRayNotice())
