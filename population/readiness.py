"""Per-node readiness: a worker's node has the task's data and tokenizer, the same as the driver's.

Nothing assumes a shared filesystem, so every node keeps its own cache. Before its first
experiment a worker calls `ensure_node_ready`: a missing cache is prepared once per node (the
first worker takes a file lock in the cache directory and runs `python -m prepare`; the others
wait for the lock, then find the cache ready), and the cache's fingerprint must equal the
driver's, or results of different nodes would not be comparable.

The fingerprint covers what the metric depends on: the tokenizer and the validation shard
(climbmix), the val and test splits (enwik8). File names come from `prepare`'s own path helpers.
"""
from __future__ import annotations

import ast
import fcntl
import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

from prepare import cache as climbmix_cache
from prepare.tasks import DEFAULT_TASK, Task, get_task

LOCK_FILE = ".prepare.lock"
PREPARE_LOG = "prepare.log"
DEFAULT_LOCK_TIMEOUT_S = 6 * 3600.0      # a first download of the data can take hours
LOCK_POLL_S = 0.2
PROJECT_ROOT = Path(__file__).resolve().parent.parent   # where `python -m prepare` is importable
_CHUNK = 1 << 20


class NodeNotReady(RuntimeError):
    """This node cannot run the task's experiments; the message is one line naming the node."""


# ---------------------------------------------------------------- what a prepared cache holds

def _in_cache(helper_path: Path, cache_dir: Path) -> Path:
    """`prepare`'s helpers read AUTORESEARCH_CACHE; re-root what they return onto `cache_dir`."""
    return Path(cache_dir) / helper_path.relative_to(climbmix_cache.cache_dir())


def _enwik8_dir(cache_dir: Path) -> Path:
    from prepare import enwik8             # imports torch: only for the enwik8 task
    return _in_cache(enwik8.data_dir(), cache_dir)


def required_files(task: Task, cache_dir: Path) -> list[Path]:
    """The files without which the task cannot train (a training shard stands for all of them)."""
    if task.name == "enwik8":
        from prepare.enwik8 import SPLITS
        directory = _enwik8_dir(cache_dir)
        return [directory / f"{name}.bin" for name in SPLITS] + [directory / "meta.json"]
    data = _in_cache(climbmix_cache.data_dir(), cache_dir)
    train = climbmix_cache.train_shard_paths(data)
    return fingerprint_files(task, cache_dir) + [train[0] if train else data / climbmix_cache.shard_name(0)]


def fingerprint_files(task: Task, cache_dir: Path) -> list[Path]:
    """The files that make two nodes' results comparable."""
    if task.name == "enwik8":
        directory = _enwik8_dir(cache_dir)
        return [directory / "val.bin", directory / "test.bin"]
    from prepare.tokenizer import TOKENIZER_FILE
    return [_in_cache(climbmix_cache.tokenizer_dir(), cache_dir) / TOKENIZER_FILE,
            climbmix_cache.val_shard_path(_in_cache(climbmix_cache.data_dir(), cache_dir))]


def missing_files(task: Task, cache_dir: Path) -> list[Path]:
    return [path for path in required_files(task, cache_dir) if not path.is_file()]


def reads_prepared_data(train_source: str) -> bool:
    """Whether a train file imports the fixed side (`prepare`), through which it reads the task's
    prepared cache: the seed train files do; a stand-in that makes up its metric does not. A file
    that does not parse counts as reading it (its own training will say what is wrong)."""
    try:
        tree = ast.parse(train_source)
    except SyntaxError:
        return True
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        if any(name == "prepare" or name.startswith("prepare.") for name in names):
            return True
    return False


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def cache_fingerprint(task: Task | str, cache_dir: str | os.PathLike) -> str:
    """sha256 over the names and contents of the task's fingerprint files (see module doc)."""
    task = get_task(task) if isinstance(task, str) else task
    cache_dir = Path(cache_dir)
    digest = hashlib.sha256(task.name.encode())
    for path in fingerprint_files(task, cache_dir):
        if not path.is_file():
            raise NodeNotReady(f"node {socket.gethostname()}: {path} is missing; run `{prepare_command(task)}`")
        digest.update(f"\0{path.relative_to(cache_dir)}\0{_file_sha256(path)}".encode())
    return digest.hexdigest()


def prepare_command(task: Task) -> str:
    return "python -m prepare" + ("" if task.name == DEFAULT_TASK else f" --task {task.name}")


# ---------------------------------------------------------------- preparing once per node

def run_prepare(task: Task, cache_dir: Path, prepare_args: Sequence[str]) -> None:
    """`python -m prepare --task <task> <prepare_args>` into `cache_dir`, its output in prepare.log."""
    argv = [sys.executable, "-m", "prepare", "--task", task.name, *prepare_args]
    env = {**os.environ, "AUTORESEARCH_CACHE": str(cache_dir)}
    log_path = Path(cache_dir) / PREPARE_LOG
    with open(log_path, "wb") as log:
        code = subprocess.run(argv, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL).returncode
    if code != 0:
        lines = log_path.read_text(errors="replace").strip().splitlines()
        last = lines[-1].strip() if lines else f"exit code {code}"
        raise NodeNotReady(f"node {socket.gethostname()}: `{prepare_command(task)}` failed: {last} (log: {log_path})")


@contextmanager
def node_lock(cache_dir: Path, timeout_s: float):
    """An exclusive fcntl lock on <cache_dir>/.prepare.lock, shared by every process of the node.
    The kernel drops it when its holder dies, so a crashed preparer never blocks the others."""
    path = Path(cache_dir) / LOCK_FILE
    with open(path, "a") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise NodeNotReady(f"node {socket.gethostname()}: waited {timeout_s:g} s for another worker "
                                       f"preparing {cache_dir} (lock {path})") from None
                time.sleep(LOCK_POLL_S)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


PrepareFn = Callable[[Task, Path, Sequence[str]], None]


def ensure_node_ready(task: Task | str, cache_dir: str | os.PathLike, expected_fingerprint: str | None,
                      prepare_args: Sequence[str] = (), lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
                      prepare: PrepareFn = run_prepare) -> str:
    """Prepare this node's cache if it lacks anything (once per node), then check that it matches
    the driver's `expected_fingerprint` (None: no check). Returns the node's fingerprint; raises
    NodeNotReady with one line otherwise."""
    task = get_task(task) if isinstance(task, str) else task
    cache_dir = Path(cache_dir).expanduser()
    host = socket.gethostname()
    if missing_files(task, cache_dir):
        cache_dir.mkdir(parents=True, exist_ok=True)
        with node_lock(cache_dir, lock_timeout):
            if missing_files(task, cache_dir):          # not prepared by whoever held the lock before
                prepare(task, cache_dir, list(prepare_args))
                still = missing_files(task, cache_dir)
                if still:
                    raise NodeNotReady(f"node {host}: `{prepare_command(task)}` ran but {still[0]} is still missing")
    fingerprint = cache_fingerprint(task, cache_dir)
    if expected_fingerprint and fingerprint != expected_fingerprint:
        raise NodeNotReady(f"node {host}: tokenizer/validation data differ from the driver's "
                           f"({fingerprint[:12]} vs {expected_fingerprint[:12]}); run `{prepare_command(task)}` "
                           "with the same corpus on every node")
    return fingerprint
