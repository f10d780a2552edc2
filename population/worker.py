"""The worker side: one Ray actor per worker (agent + node-local clone).

A worker never sees the driver's filesystem. The driver sends it a commit as git bundle bytes; the
worker fetches them into its own clone (a temp directory of its node), makes a worktree, runs its
agent there, applies the guards, commits, sends the child back as a bundle, and exports the
commit for training. Training is a separate Ray task (`population/training.py`) that needs one
GPU (or one CPU in CPU mode) and is pinned to the worker's node, because the export lives there;
Ray sets CUDA_VISIBLE_DEVICES for it, the subprocess inherits it.

`WorkerCore` is plain Python (testable without Ray); `WorkerActor` is its Ray wrapper.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import ray

from population import export, gitops, readiness, sandbox
from population.agents.base import AGENT_OUTPUT_FILES
from population.agents.env import scrub_secrets
from population.processes import signal_group
from population.secrets import leaked_names
from population.training import PREPARE_DIR, training_cache_dir


def worker_root(workdir: str | None, tag: str, worker: str) -> Path:
    """Where a worker keeps its clone on its own node."""
    base = workdir or os.environ.get("AUTORESEARCH_WORKDIR") or os.path.join(tempfile.gettempdir(),
                                                                             "autoresearch-population")
    return Path(base) / tag / worker


@dataclass
class PrepareJob:
    """Get an experiment's worktree ready: train `commit` as is (baseline, re-run) or, with a
    `prompt`, let the agent make a child of it (child)."""
    exp_id: int
    commit: str                    # the commit to train (baseline/rerun) or the parent (child)
    bundle_ref: str                # the ref inside the bundle bytes sent with the job
    prepare_fingerprint: str       # the seed's prepare/ fingerprint, checked before training
    train_file: str
    prompt: str | None = None      # a child when set
    branch: str | None = None      # the child's branch name (also used in the worker's clone)
    member: str = ""
    agent_timeout_s: float = 0.0


@dataclass
class Prepared:
    """What the worker sends back: a worktree ready to train, or why there is none."""
    exp_id: int
    status: str                    # ready | agent_error | violation
    worktree: str = ""
    commit: str = ""
    reason: str = ""
    bundle: bytes | None = None    # the child commit (thin bundle: the parent is excluded)
    bundle_ref: str = ""
    description: str = ""
    transcript: str = ""
    diff: str = ""                 # only when there is no commit to diff (violations, agent errors)
    log_path: str = ""             # where the training's run.log goes on the worker's node
    output_dir: str = ""           # the only place a training may write (its checkpoint)
    agent_seconds: float | None = None
    agent_tokens: int | None = None
    agent_cost_usd: float | None = None


class WorkerCore:
    """One worker: its agent and its node-local clone."""

    def __init__(self, name: str, tag: str, agent_spec: str, agent_options: dict, workdir: str | None = None,
                 use_sandbox: bool = False):
        from population.agents import make_agent

        if use_sandbox:
            sandbox.require()      # SandboxUnavailable (one line): this node cannot sandbox trainings and agents
        self.name = name
        self.agent = make_agent(agent_spec, **agent_options)
        self.agent.use_sandbox = use_sandbox
        self.root = worker_root(workdir, tag, name)
        shutil.rmtree(self.root, ignore_errors=True)   # leftovers of an earlier driver: bundles refill it
        self.clone = gitops.init_clone(self.root / "clone")
        self.worktrees = self.root / "worktrees"
        self.logs = self.root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.agent.output_dir = self.root / "agent"      # one proposal at a time: its output, for `activity`

    def info(self) -> dict:
        return {"worker": self.name, "node_id": ray.get_runtime_context().get_node_id() if ray.is_initialized() else "",
                "hostname": socket.gethostname(), "clone": str(self.clone.working_tree_dir),
                "agent": self.agent.spec}

    def ensure_ready(self, task: str, expected_fingerprint: str | None, cache: str | None = None) -> str:
        """This node's data cache (`cache`: the driver's AUTORESEARCH_CACHE, which the trainings get;
        None: this node's own) prepared and equal to the driver's; raises NodeNotReady (one line)."""
        return readiness.ensure_node_ready(task, cache or training_cache_dir({}), expected_fingerprint)

    def log_path(self, exp_id: int) -> str:
        return str(self.logs / f"{exp_id}.log")

    def prepare(self, job: PrepareJob, bundle: list) -> Prepared:
        """Fetch the commit, make the worktree, and (for a child) run the agent and commit.
        `bundle` is [ObjectRef of the bundle bytes] (or [bytes]): fetched only when the clone
        lacks the commit, so a parent already here costs no transfer."""
        from population import guards

        if not gitops.has_commit(self.clone, job.commit):
            data = bundle[0] if isinstance(bundle[0], bytes) else ray.get(bundle[0])
            gitops.fetch_bundle(self.clone, data, job.bundle_ref)
        worktree = self.worktrees / str(job.exp_id)
        gitops.add_detached_worktree(self.clone, worktree, job.commit, job.branch)
        if job.prompt is None:
            ready = Prepared(job.exp_id, "ready", str(worktree), job.commit, log_path=self.log_path(job.exp_id))
            return self._checked(job, ready, guards)

        proposal = self.agent.propose(worktree, job.prompt, timeout=job.agent_timeout_s)
        result = Prepared(job.exp_id, "ready", str(worktree), description=proposal.description,
                          transcript=proposal.transcript, agent_seconds=proposal.seconds,
                          agent_tokens=proposal.tokens, agent_cost_usd=proposal.cost_usd,
                          log_path=self.log_path(job.exp_id))
        gitdir = gitops.worktree_gitdir(self.clone, worktree)       # from the clone's side, never the worktree's .git
        tampered = guards.check_worktree_link(worktree, gitdir)
        if tampered:                    # before any git command could obey what the agent planted
            guards.restore_worktree_link(worktree, gitdir)
            result.status, result.reason = "violation", tampered
            return result
        attempted = gitops.full_diff(worktree, job.commit)          # before the guard reverts it
        leaked = leaked_names(attempted)
        if leaked:   # a key pasted into the change must never reach a commit, a bundle or diff.patch
            result.status = "violation"
            result.reason = f"the change contains the value of {', '.join(leaked)}; refused, never committed"
            return result
        if proposal.error:
            result.status, result.reason, result.diff = "agent_error", scrub_secrets(proposal.error), scrub_secrets(attempted)
            return result
        changed = guards.enforce_train_file_only(worktree, job.train_file)
        if changed:
            result.diff = scrub_secrets(attempted)
            result.status = "violation"
            result.reason = f"changed files other than {job.train_file}: {', '.join(changed)}"
            return result
        message = gitops.commit_message(proposal.description, exp_id=job.exp_id, parent_commit=job.commit,
                                        member=job.member, agent=self.agent.spec)
        result.commit = gitops.commit_worktree(worktree, message, [job.train_file])
        result.bundle, result.bundle_ref = gitops.bundle_bytes(self.clone, result.commit, exclude=[job.commit])
        return self._checked(job, result, guards)

    def _checked(self, job: PrepareJob, result: Prepared, guards) -> Prepared:
        """Export the commit (what trains is what was committed), then the fixed side must be
        byte-identical to the seed's."""
        commit = result.commit or job.commit
        result.output_dir = str(self.root / "outputs" / str(job.exp_id))
        try:
            trained = export.export_commit(Path(self.clone.git_dir), commit, self.root / "exports" / str(job.exp_id),
                                           job.train_file)
        except export.ExportError as exc:
            result.status, result.reason = "violation", str(exc)
            return result
        result.worktree = str(trained)
        fingerprint = export.directory_fingerprint(trained, PREPARE_DIR)
        if fingerprint != job.prepare_fingerprint:
            result.status = "violation"
            result.reason = f"{PREPARE_DIR}/ differs from the seed's (fingerprint {fingerprint[:12]})"
        return result

    def cleanup(self, exp_id: int) -> None:
        """Drop an experiment's worktree, export and outputs (the commit stays in the clone)."""
        gitops.remove_worktree(self.clone, self.worktrees / str(exp_id))
        for leftover in (self.root / "exports" / str(exp_id), self.root / "outputs" / str(exp_id)):
            shutil.rmtree(leftover, ignore_errors=True)

    @ray.method(concurrency_group="control")
    def activity(self, preparing: int | None, training: int | None) -> dict[int, float]:
        """Seconds since the experiment being prepared (its agent's output) and the one training
        (its run.log) last wrote; the driver's watchdog calls it beside a busy `prepare`."""
        now, seen = time.time(), {}
        sources = {preparing: [self.root / "agent" / name for name in AGENT_OUTPUT_FILES],
                   training: [Path(self.log_path(training)) if training is not None else None]}
        for exp_id, paths in sources.items():
            times = [path.stat().st_mtime for path in paths if path is not None and path.exists()]
            if exp_id is not None and times:
                seen[exp_id] = max(0.0, now - max(times))
        return seen

    @ray.method(concurrency_group="control")
    def stop(self, grace_s: float = 3.0) -> list[int]:
        """Kill the process groups this worker started (an agent mid-proposal, with its tools): a
        running actor method cannot be interrupted, and Ray kills only the direct children of a
        dying worker, so an agent's grandchildren would outlive it. Runs in its own concurrency
        group, beside a busy `prepare`. Returns the killed group ids."""
        groups = child_process_groups(os.getpid())
        stop_process_groups(groups, grace_s)
        return groups


def stop_process_groups(groups: list[int], grace_s: float) -> None:
    """SIGTERM the groups, wait up to `grace_s` for their leaders to go, then SIGKILL them."""
    for pgid in groups:
        signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_leader_alive(pgid) for pgid in groups):
        time.sleep(0.1)
    for pgid in groups:
        signal_group(pgid, signal.SIGKILL)


def _leader_alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)        # reap it if it is our child and has exited
    except ChildProcessError:
        pass
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def child_process_groups(parent_pid: int) -> list[int]:
    """Children of `parent_pid` that lead their own process group (started with a new session),
    read from /proc (empty where there is none)."""
    groups = []
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid = int(entry.parent.name)
        ppid, pgid = int(fields[1]), int(fields[2])
        if ppid == parent_pid and pgid == pid and fields[0] != "Z":
            groups.append(pid)
    return sorted(groups)


WorkerActor = ray.remote(concurrency_groups={"control": 1})(WorkerCore)
