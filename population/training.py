"""One experiment's training and its trusted evaluation, on the worker's node.

`run_training` runs `python <train_file>` from the experiment's export (a fresh `git archive` of
the commit, never the agent's worktree) under a hard wall-clock limit, with only its output
directory writable under the sandbox. Beside it, from the start, the trusted evaluator
(`prepare/trusted_eval.py`, a copy of the seed's fixed side) loads the evaluation data and starts
the model server, so that the imports cost nothing after the training. When the training exits
cleanly, left its export as it was and saved its model, the evaluator is told to go; it scores
the checkpoint from the logits the child's model returns, in processes of its own. The metric is
the evaluator's, never the train file's summary.

Also measured from outside: the training's wall seconds and its busy device seconds
(`population/usage.py`), for the budget rule (`population/budget.py`).

`run_training` is plain Python (testable without Ray); `train_task` is its Ray wrapper.
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
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray

from population import export, sandbox
from population.agents.env import is_secret_name, scrub_secrets
from population.processes import stop_group
from population.usage import BusySampler

PREPARE_DIR = "prepare"
MAX_LOG_BYTES = 4_000_000
KILL_GRACE_S = 10.0
CHECKPOINT_NAME = "model.pt"
WARMUP_CHECKPOINT_NAME = "warmup.pt"     # the training's optional early copy, for the evaluator's compile
EVALUATOR_MODULE = "prepare.trusted_eval"
EVALUATOR_FILE = "prepare/trusted_eval.py"
EVAL_HEADER = "=== trusted evaluation (prepare/trusted_eval.py) ==="   # never '---': the summary parser ends there


@dataclass
class TrainJob:
    exp_id: int
    worktree: str                  # the experiment's export (what was committed, nothing else)
    train_file: str
    env: dict[str, str]            # AUTORESEARCH_* set by the driver (budget, seed, device, ...)
    timeout_s: float
    log_path: str
    device: str                    # cuda | cpu
    accelerator: str = ""          # the node's accelerator_type, a fallback GPU name
    sandbox: bool = False          # run it inside bubblewrap (population/sandbox.py)
    task: str = "climbmix"
    output_dir: str = ""           # where the training saves its model; empty: nothing is scored
    eval_timeout_s: float = 900.0


@dataclass
class TrainResult:
    exp_id: int
    returncode: int | None
    timed_out: bool
    seconds: float                 # the training process's wall seconds, timed here
    log: str
    gpu: str
    node: str
    cuda_visible_devices: str
    started_at: float = 0.0
    finished_at: float = 0.0
    extra: dict = field(default_factory=dict)
    evaluation: dict | None = None   # the trusted evaluator's result ({"metric": ...} or {"error": ..., "rule": ...})
    eval_log: str = ""             # what the evaluator and the model server printed (run.log, after EVAL_HEADER)
    busy_seconds: float | None = None   # device-busy seconds of the training (usage.py), None: not measurable


# ---------------------------------------------------------------- the processes

def _load_libc():
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None


_LIBC = _load_libc()          # loaded before any fork: the child only makes one call
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In a child: die when the Ray worker that started it dies (no orphans on GPUs)."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _start(argv: list[str], env: dict[str, str], cwd: str, stdout, stderr=subprocess.STDOUT,
           stdin=subprocess.DEVNULL) -> subprocess.Popen:
    """A process in a session of its own (its group is the unit to kill), dying with this one."""
    return subprocess.Popen(argv, cwd=cwd, env=env, stdout=stdout, stderr=stderr, stdin=stdin,
                            start_new_session=True, preexec_fn=_die_with_parent)


def _wait_limited(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Wait for `proc` up to `timeout_s`; True when it had to be killed. Whatever it leaves behind
    in its group is killed when it ends; a cancelled task (KeyboardInterrupt) leaves no orphans."""
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
    except BaseException:
        stop_group(proc, 2.0)
        raise
    return timed_out


# ---------------------------------------------------------------- environment and command line

def training_env(job: TrainJob, node_env: dict[str, str]) -> dict[str, str]:
    """The training subprocess's environment: the node's basics, the driver's AUTORESEARCH_*, the
    export on PYTHONPATH, Ray's CUDA_VISIBLE_DEVICES; never anything that looks like a secret.
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


def evaluation_files(task: str, data_cache: Path) -> list[Path]:
    """The files only the evaluator reads: the validation (and holdout) data of `task`."""
    from prepare import constants
    if task == "enwik8":
        return [data_cache / "enwik8" / name for name in ("val.bin", "test.bin")]
    return [data_cache / "data" / f"shard_{constants.VAL_SHARD:05d}.parquet"]


# what a training imports besides torch, compiled into the cache's bytecode with it
WARM_MODULES = ("numpy", "pyarrow.parquet", "triton", "torch._inductor.compile_fx", "prepare.dataloader",
                "prepare.tokenizer")
_WARM = f"""
import importlib
from prepare.runtime import setup_environment
setup_environment()
for name in {WARM_MODULES!r}:
    try:
        importlib.import_module(name)
    except Exception:      # best effort: what fails to import is compiled in each training, as before
        pass
"""


def warm_bytecode(data_cache: Path) -> None:
    """Fill the data cache's Python bytecode (prepare/runtime.py) from this trusted process before a
    sandboxed GPU training needs it: in the sandbox the cache is read-only, and where torch ships
    without bytecode every training compiled its ~2,000 modules again (start-up 15.5 s sandboxed
    against 5.5 s plain on an H100). Once per cache; best effort."""
    from prepare.runtime import torch_bytecode

    if os.path.exists(torch_bytecode(str(data_cache / "pycache"))):
        return
    fixed_side = str(Path(__file__).resolve().parents[1])    # this project's own prepare/, not an export's
    env = {**os.environ, "AUTORESEARCH_CACHE": str(data_cache),
           "PYTHONPATH": os.pathsep.join(filter(None, [fixed_side, os.environ.get("PYTHONPATH")]))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([sys.executable, "-c", _WARM], cwd=fixed_side, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=300, check=False)


def _confined(job: TrainJob, argv: list[str], env: dict[str, str], writable: str, readonly: list) -> tuple[list[str], dict[str, str]]:
    """`argv` in the sandbox (when the job asks for it): `writable` the only place it may write
    besides its private /tmp, the export read-only, the evaluation's data hidden."""
    if not job.sandbox:
        return argv, env
    data_cache = training_cache_dir(env)
    data_cache.mkdir(parents=True, exist_ok=True)     # bwrap cannot bind a path that does not exist
    wrapped = sandbox.sandboxed(argv, worktree=writable, data_cache=data_cache, env=env, mode=sandbox.TRAINING,
                                readonly=readonly, hidden=evaluation_files(job.task, data_cache), chdir=job.worktree)
    return wrapped.argv, wrapped.env


def checkpoint_path(job: TrainJob) -> Path:
    """Where the training saves its model for the evaluator (the only model scored)."""
    return Path(job.output_dir) / CHECKPOINT_NAME


def warmup_path(job: TrainJob) -> str:
    """Where the training may save the early copy of its model for the model server's compile."""
    return str(Path(job.output_dir) / WARMUP_CHECKPOINT_NAME)


def training_command(job: TrainJob, env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """argv and environment of the training subprocess; with `job.sandbox` wrapped in bubblewrap
    (no network; writable: its output directory, or the export's files when nothing is scored).
    Raises SandboxUnavailable."""
    argv = [sys.executable, str(Path(job.worktree) / job.train_file)]
    if job.output_dir:
        env = {**env, "AUTORESEARCH_CHECKPOINT": str(checkpoint_path(job)),
               "AUTORESEARCH_WARMUP_CHECKPOINT": warmup_path(job)}
        return _confined(job, argv, env, job.output_dir, [job.worktree])
    return _confined(job, argv, env, job.worktree, [Path(job.worktree) / PREPARE_DIR])


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


# ---------------------------------------------------------------- the trusted evaluation

def _export_fingerprint(job: TrainJob) -> str:
    """The export's prepare/ and train file, to prove the training left them as they were."""
    train = Path(job.worktree) / job.train_file
    return export.directory_fingerprint(job.worktree, PREPARE_DIR) + export.file_digest(train)


class Evaluation:
    """The evaluator of one experiment: started beside the training, told to go or called off."""

    def __init__(self, job: TrainJob, env: dict[str, str]):
        self.job = job
        out = Path(job.output_dir).parent
        self.scorer_root = out / f"{job.exp_id}.evaluator"       # only a copy of the checked prepare/
        self.result_path = out / f"{job.exp_id}.evaluation"
        self.stderr_path = out / f"{job.exp_id}.evaluation.log"
        shutil.rmtree(self.scorer_root, ignore_errors=True)
        shutil.copytree(Path(job.worktree) / PREPARE_DIR, self.scorer_root / PREPARE_DIR, symlinks=True)
        train_file = str(Path(job.worktree) / job.train_file)
        self.checkpoint = checkpoint_path(job)
        server = [sys.executable, "-s", "-B", "-m", "prepare.model_server", train_file, str(self.checkpoint), job.device]
        # the early copy's path reaches the evaluator as a variable, which a seed's older evaluator ignores
        server, server_env = _confined(job, server, {**env, "PYTHONDONTWRITEBYTECODE": "1",
                                                     "AUTORESEARCH_WARMUP_CHECKPOINT": warmup_path(job)},
                                       job.output_dir, [job.worktree])
        scorer = [sys.executable, "-E", "-s", "-B", "-m", EVALUATOR_MODULE, "--task", job.task, "--wait-for-go",
                  "--train-file", train_file, "--checkpoint", str(self.checkpoint), "--device", job.device,
                  "--server-argv-json", json.dumps(server)]
        with open(self.result_path, "wb") as result, open(self.stderr_path, "wb") as errors:
            self.proc = _start(scorer, server_env, str(self.scorer_root), result, errors, stdin=subprocess.PIPE)

    def call_off(self) -> None:
        try:
            self.proc.stdin.close()       # EOF instead of "go": the evaluator exits, its server with it
        except OSError:
            pass
        _wait_limited(self.proc, 30)
        self._clean()

    def score(self, fingerprint_before: str) -> dict:
        """Go, once the export is as it was and the checkpoint is there; the evaluator's verdict."""
        job = self.job
        if _export_fingerprint(job) != fingerprint_before or \
                export.directory_fingerprint(self.scorer_root, PREPARE_DIR) != fingerprint_before[:64]:
            self.call_off()
            return {"error": "export rule: the training changed prepare/ or the train file of its export",
                    "rule": "violation"}
        if not self.checkpoint.is_file():
            self.call_off()
            return {"error": f"checkpoint rule: the training saved no model at AUTORESEARCH_CHECKPOINT "
                             f"({CHECKPOINT_NAME}); the train file must save it for the evaluator (program.md)",
                    "rule": "crash"}
        started = time.monotonic()
        try:
            self.proc.stdin.write(b"go\n")
            self.proc.stdin.close()
        except OSError:
            pass
        timed_out = _wait_limited(self.proc, job.eval_timeout_s)
        lines = self.result_path.read_text(errors="replace").strip().splitlines()
        self._clean()
        if timed_out:
            return {"error": f"the evaluation passed its {job.eval_timeout_s:g} s limit", "rule": "timeout"}
        try:
            result = json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            return {"error": f"the evaluator exited with code {self.proc.returncode} and no result", "rule": "crash"}
        if not isinstance(result, dict) or not ("error" in result or "metric" in result):
            return {"error": "the evaluator gave no metric", "rule": "crash"}
        if "error" in result:   # a broken rule (causality, independence...) is a violation; a failure a crash
            result["rule"] = "violation" if " rule:" in f" {result['error']}" else "crash"
        result["wall_seconds"] = time.monotonic() - started
        return result

    def log_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        finally:
            self.stderr_path.unlink(missing_ok=True)

    def _clean(self) -> None:
        shutil.rmtree(self.scorer_root, ignore_errors=True)
        self.result_path.unlink(missing_ok=True)


# ---------------------------------------------------------------- the task

def run_training(job: TrainJob) -> TrainResult:
    """`python <train_file>` from the experiment's export under a hard wall-clock limit, then, when
    it trained and saved its model, the trusted evaluation of that checkpoint (see the module doc)."""
    node_env = dict(os.environ)
    env = training_env(job, node_env)
    if job.sandbox and job.device == "cuda":
        warm_bytecode(training_cache_dir(env))
    argv, popen_env = training_command(job, env)
    log_path = Path(job.log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    evaluation = before = None
    if job.output_dir:
        shutil.rmtree(job.output_dir, ignore_errors=True)
        Path(job.output_dir).mkdir(parents=True)
        before = _export_fingerprint(job)
        evaluation = Evaluation(job, env)
    started = time.time()
    try:
        with open(log_path, "wb") as log:
            proc = _start(argv, popen_env, job.worktree, log)
            sampler = BusySampler(job.device, proc.pid, env["CUDA_VISIBLE_DEVICES"]).start()
            try:
                timed_out = _wait_limited(proc, job.timeout_s)
            finally:
                busy = sampler.stop()
        finished = time.time()
        verdict, eval_log = None, ""
        if evaluation is not None:
            if proc.returncode == 0 and not timed_out:
                verdict = evaluation.score(before)
            else:
                evaluation.call_off()
            eval_log = scrub_secrets(evaluation.log_text())
    except BaseException:
        if evaluation is not None:
            evaluation.call_off()
        raise
    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    return TrainResult(exp_id=job.exp_id, returncode=proc.returncode, timed_out=timed_out,
                       seconds=finished - started, log=scrub_secrets(read_log(log_path)),
                       gpu=gpu_name(job, env["CUDA_VISIBLE_DEVICES"]),
                       node=socket.gethostname(), cuda_visible_devices=env["CUDA_VISIBLE_DEVICES"],
                       started_at=started, finished_at=finished,
                       extra={"node_id": node, "busy_timeline": sampler.timeline},
                       evaluation=verdict, eval_log=eval_log, busy_seconds=busy)


train_task = ray.remote(max_retries=0)(run_training)
