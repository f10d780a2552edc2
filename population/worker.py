"""The worker side: one Ray actor per worker (agent + node-local clone) and the training task.

A worker never sees the driver's filesystem. The driver sends it a commit as git bundle bytes; the
worker fetches them into its own clone (a temp directory of its node), makes a worktree, runs its
agent there, applies the guards, commits, and sends the child back as a bundle. Training is a
separate Ray task that needs one GPU (or one CPU in CPU mode) and is pinned to the worker's node,
because the worktree lives there; Ray sets CUDA_VISIBLE_DEVICES for it, the subprocess inherits it.

`WorkerCore` and `run_training` are plain Python (testable without Ray); `WorkerActor` and
`train_task` are their Ray wrappers.
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray

from population import export, gitops, readiness, sandbox
from population.processes import signal_group, stop_group
from population.agents.env import is_secret_name
from population.agents.env import scrub_secrets
from population.secrets import leaked_names

PREPARE_DIR = "prepare"
MAX_LOG_BYTES = 4_000_000
KILL_GRACE_S = 10.0
EVALUATOR_MODULE = "prepare.trusted_eval"
EVALUATOR_FILE = "prepare/trusted_eval.py"
EVAL_HEADER = "=== trusted evaluation (prepare/trusted_eval.py) ==="   # never '---': the summary parser ends there
CHECKPOINT_NAME = "model.pt"


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


@dataclass
class TrainJob:
    exp_id: int
    worktree: str
    train_file: str
    env: dict[str, str]            # AUTORESEARCH_* set by the driver (budget, seed, device, ...)
    timeout_s: float
    log_path: str
    device: str                    # cuda | cpu
    accelerator: str = ""          # the node's accelerator_type, a fallback GPU name
    sandbox: bool = False          # run it inside bubblewrap (population/sandbox.py)
    task: str = "climbmix"
    output_dir: str = ""           # empty: the old contract (the train file's own summary is the metric)
    trusted_eval: bool = False     # score the checkpoint with the seed's prepare/trusted_eval.py
    eval_timeout_s: float = 900.0


@dataclass
class TrainResult:
    exp_id: int
    returncode: int | None
    timed_out: bool
    seconds: float
    log: str
    gpu: str
    node: str
    cuda_visible_devices: str
    started_at: float = 0.0
    finished_at: float = 0.0
    extra: dict = field(default_factory=dict)
    evaluation: dict | None = None   # the trusted evaluator's result ({"metric": ...} or {"error": ...})


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


# ---------------------------------------------------------------- training

def _load_libc():
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None


_LIBC = _load_libc()          # loaded before any fork: the child only makes one call
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the training child: die when the Ray worker that started it dies (no orphans on GPUs)."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def training_env(job: TrainJob, node_env: dict[str, str]) -> dict[str, str]:
    """The training subprocess's environment: the node's basics, the driver's AUTORESEARCH_*, the
    worktree on PYTHONPATH, Ray's CUDA_VISIBLE_DEVICES; never anything that looks like a secret.
    Not the node's OMP_NUM_THREADS: Ray sets it to 1 in its workers, which would throttle a GPU training."""
    env = {name: value for name, value in node_env.items()
           if name in sandbox.NODE_ENV_NAMES or name.startswith(sandbox.TORCH_ENV_PREFIXES)}
    env.update(job.env)
    env["PYTHONPATH"] = job.worktree
    env["PYTHONUNBUFFERED"] = "1"
    env["CUDA_VISIBLE_DEVICES"] = "" if job.device == "cpu" else node_env.get("CUDA_VISIBLE_DEVICES", "")
    if job.device == "cpu":   # a CPU training holds one Ray CPU: side-by-side trainings must not fight over cores
        env.setdefault("OMP_NUM_THREADS", "1")
    return {name: value for name, value in env.items() if not is_secret_name(name)}


def training_cache_dir(env: dict[str, str]) -> Path:
    """The data cache a training with environment `env` reads (prepare's own default otherwise)."""
    from prepare.cache import cache_dir
    return Path(env["AUTORESEARCH_CACHE"]).expanduser() if env.get("AUTORESEARCH_CACHE") else cache_dir()


def training_command(job: TrainJob, env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """argv and environment of the training subprocess; with `job.sandbox` wrapped in bubblewrap
    (no network; writable: its output directory, or the worktree under the old contract; the
    evaluation's data hidden). Raises SandboxUnavailable."""
    argv = [sys.executable, str(Path(job.worktree) / job.train_file)]
    if job.output_dir:
        env = {**env, "AUTORESEARCH_CHECKPOINT": str(Path(job.output_dir) / CHECKPOINT_NAME)}
    if not job.sandbox:
        return argv, env
    data_cache = training_cache_dir(env)
    data_cache.mkdir(parents=True, exist_ok=True)     # bwrap cannot bind a path that does not exist
    writable = job.output_dir or job.worktree
    wrapped = sandbox.sandboxed(argv, worktree=writable, data_cache=data_cache, env=env, mode=sandbox.TRAINING,
                                readonly=[job.worktree] if job.output_dir else [Path(job.worktree) / PREPARE_DIR],
                                hidden=evaluation_files(job.task, data_cache), chdir=job.worktree)
    return wrapped.argv, wrapped.env


def evaluation_files(task: str, data_cache: Path) -> list[Path]:
    """The files only the evaluator reads: the validation (and holdout) data of `task`."""
    from prepare import constants
    if task == "enwik8":
        return [data_cache / "enwik8" / name for name in ("val.bin", "test.bin")]
    return [data_cache / "data" / f"shard_{constants.VAL_SHARD:05d}.parquet"]


def gpu_name(job: TrainJob, cuda_visible_devices: str) -> str:
    """The GPU's name from nvidia-smi (no CUDA context in this long-lived process)."""
    if job.device == "cpu":
        return "cpu"
    first = cuda_visible_devices.split(",")[0].strip()
    if first and shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", first],
                                 capture_output=True, text=True, timeout=20)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError):
            pass
    return job.accelerator or "unknown"


def read_log(path: Path, limit: int = MAX_LOG_BYTES) -> str:
    """The log, its head and tail kept when it is over `limit` bytes (the summary is at the end)."""
    size = path.stat().st_size if path.exists() else 0
    with open(path, "rb") as f:
        if size <= limit:
            return f.read().decode(errors="replace")
        head = f.read(limit // 4).decode(errors="replace")
        f.seek(size - 3 * limit // 4)
        return f"{head}\n[... {size - limit} bytes cut ...]\n" + f.read().decode(errors="replace")


def _run_limited(argv: list[str], env: dict[str, str], cwd: str, stdout, timeout_s: float, stderr=None) -> tuple[int | None, bool]:
    """Run `argv` in a session of its own under a hard wall-clock limit; (returncode, timed out).
    Whatever the process leaves behind in its group is killed when it ends."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=stdout, stderr=stderr if stderr is not None else subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)
    timed_out = False
    try:
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None:       # short waits keep the task responsive to cancellation
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                stop_group(proc, KILL_GRACE_S)
                break
            try:
                proc.wait(timeout=min(remaining, 0.5))
            except subprocess.TimeoutExpired:
                pass
        stop_group(proc, 0)               # leftovers of the group (a helper it started) die with it
    except BaseException:                # cancelled (KeyboardInterrupt) or dying: no orphans
        stop_group(proc, 2.0)
        raise
    return proc.returncode, timed_out


def run_training(job: TrainJob) -> TrainResult:
    """`python <train_file>` from the experiment's export under a hard wall-clock limit, then, when
    the file trained and saved its model, the trusted evaluation of that checkpoint."""
    node_env = dict(os.environ)
    env = training_env(job, node_env)
    argv, popen_env = training_command(job, env)
    log_path = Path(job.log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if job.output_dir:
        shutil.rmtree(job.output_dir, ignore_errors=True)
        Path(job.output_dir).mkdir(parents=True)
    before = _exported_fingerprint(job) if job.trusted_eval else None
    started = time.time()
    with open(log_path, "wb") as log:
        returncode, timed_out = _run_limited(argv, popen_env, job.worktree, log, job.timeout_s)
    finished = time.time()
    evaluation = None
    if job.trusted_eval and returncode == 0 and not timed_out:
        evaluation = evaluate_checkpoint(job, env, before, log_path)
    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    return TrainResult(exp_id=job.exp_id, returncode=returncode, timed_out=timed_out,
                       seconds=finished - started, log=scrub_secrets(read_log(log_path)),
                       gpu=gpu_name(job, env["CUDA_VISIBLE_DEVICES"]),
                       node=socket.gethostname(), cuda_visible_devices=env["CUDA_VISIBLE_DEVICES"],
                       started_at=started, finished_at=finished, extra={"node_id": node}, evaluation=evaluation)


def _exported_fingerprint(job: TrainJob) -> str:
    """The export's prepare/ and train file, to prove the training left them as they were."""
    train = Path(job.worktree) / job.train_file
    return export.directory_fingerprint(job.worktree, PREPARE_DIR) + export.file_digest(train)


def evaluate_checkpoint(job: TrainJob, env: dict[str, str], before: str | None, log_path: Path) -> dict:
    """The seed's evaluator (prepare/trusted_eval.py of the export, checked unchanged) scores the
    checkpoint in a process of its own; the child's code runs only in the model server it starts,
    sandboxed like the training. Its stderr goes to the end of run.log, after EVAL_HEADER."""
    checkpoint = Path(job.output_dir) / CHECKPOINT_NAME
    scorer_cwd = _scorer_root(job)
    if _exported_fingerprint(job) != before or export.directory_fingerprint(scorer_cwd, PREPARE_DIR) != before[:64]:
        shutil.rmtree(scorer_cwd, ignore_errors=True)
        return {"error": "export rule: the training changed prepare/ or the train file of its export", "rule": "violation"}
    if not checkpoint.is_file():
        return {"error": f"checkpoint rule: the training saved no model at AUTORESEARCH_CHECKPOINT ({CHECKPOINT_NAME}); "
                         "the train file must save it for the evaluator (program.md)", "rule": "crash"}
    train_file = str(Path(job.worktree) / job.train_file)
    server = [sys.executable, "-s", "-B", "-m", "prepare.model_server", train_file, str(checkpoint), job.device]
    server_env = {**env, "PYTHONDONTWRITEBYTECODE": "1"}
    if job.sandbox:
        data_cache = training_cache_dir(env)
        wrapped = sandbox.sandboxed(server, worktree=job.output_dir, data_cache=data_cache, env=server_env,
                                    mode=sandbox.TRAINING, readonly=[job.worktree],
                                    hidden=evaluation_files(job.task, data_cache), chdir=job.worktree)
        server, server_env = wrapped.argv, {**server_env, **wrapped.env}
    scorer = [sys.executable, "-E", "-s", "-B", "-m", EVALUATOR_MODULE, "--task", job.task,
              "--train-file", train_file, "--checkpoint", str(checkpoint), "--device", job.device,
              "--server-argv-json", json.dumps(server)]
    result_path = Path(job.output_dir).parent / f"{job.exp_id}.evaluation"
    with open(log_path, "ab") as log, open(result_path, "wb") as result_file:
        log.write(f"\n{EVAL_HEADER}\n".encode())
        log.flush()
        returncode, timed_out = _run_limited(scorer, server_env, scorer_cwd, result_file, job.eval_timeout_s,
                                             stderr=log)
    shutil.rmtree(scorer_cwd, ignore_errors=True)
    lines = result_path.read_text(errors="replace").strip().splitlines()
    result_path.unlink(missing_ok=True)
    if timed_out:
        return {"error": f"the evaluation passed its {job.eval_timeout_s:g} s limit", "rule": "timeout"}
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": f"the evaluator exited with code {returncode} and no result", "rule": "crash"}
    if "error" in result:
        result["rule"] = "violation" if " rule:" in f" {result['error']}" and "checkpoint" not in result["error"] else "crash"
    return result


def _scorer_root(job: TrainJob) -> str:
    """A directory holding only a copy of the export's (checked) prepare/: the evaluator runs from
    there, so nothing that a training left beside it can shadow a module it imports."""
    root = Path(job.output_dir).parent / f"{job.exp_id}.evaluator"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(Path(job.worktree) / PREPARE_DIR, root / PREPARE_DIR, symlinks=True)
    return str(root)


train_task = ray.remote(max_retries=0)(run_training)
