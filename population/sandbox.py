"""`--sandbox`: run trainings and agents inside bubblewrap (`bwrap`).

Inside the sandbox the whole filesystem is read-only, the experiment's worktree is the only
writable place besides a private /tmp, the data cache is read-only, /dev is minimal, /proc is
the sandbox's own, every namespace is unshared and the sandbox dies with its parent.

- A training gets the GPU device nodes and no network at all (its own empty network namespace,
  so not even a loopback server of the host is reachable).
- An agent (a subprocess agent: claude, codex, command:) keeps the host's network, it has to
  talk to its model; it gets no GPU, and a private HOME inside the private /tmp (tools like
  Claude Code write their config and state under ~), so the host's HOME is never written.

The environment is exactly the one given (plus HOME, TMPDIR and the caches pointed into the
sandbox). It is handed to bwrap's own process (bwrap passes its environment to the command
unchanged) rather than put on the command line with --setenv: an agent's API key on a command
line could be read by any user of the node in `ps`. `Sandboxed` carries both, so a caller does
`subprocess.Popen(s.argv, env=s.env, ...)`.

`bwrap_argv`, `sandbox_env` and `agent_env` are pure; `available`, `gpu_device_nodes` and
`sandboxed` look at the machine.
"""
from __future__ import annotations

import functools
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from population.agents.env import is_secret_name

TRAINING, AGENT = "training", "agent"
MODES = (TRAINING, AGENT)
SANDBOX_TMP = "/tmp"
AGENT_HOME = f"{SANDBOX_TMP}/home"      # an agent's private HOME, gone with its sandbox
PROBE_TIMEOUT_S = 20.0

# The C/C++ toolchain torch.compile builds with (inductor's C++ parts, Triton's launcher stubs).
# CXX is part of inductor's cache key: trainings without the node's CXX missed the cache that a
# plain run had warmed and compiled for 30 s instead of 6 (4 H200s, bench/gpu/compile_cache.sh).
TOOLCHAIN_ENV_NAMES = ("CC", "CXX", "CUDAHOSTCXX", "CFLAGS", "CXXFLAGS", "LDFLAGS", "CPATH", "LIBRARY_PATH",
                       "C_INCLUDE_PATH", "CPLUS_INCLUDE_PATH")
# The node's basics a training inherits, sandboxed or not (training.training_env uses the same list).
NODE_ENV_NAMES = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "LD_LIBRARY_PATH", "CUDA_HOME",
                  "CUDA_PATH", "HF_HOME", "HF_HUB_OFFLINE", "XDG_CACHE_HOME", "VIRTUAL_ENV", "CONDA_PREFIX",
                  *TOOLCHAIN_ENV_NAMES)
# What a training may see of its node's environment: the basics, the run's settings, compile caches.
TRAINING_ENV_NAMES = (*NODE_ENV_NAMES, "CUDA_VISIBLE_DEVICES", "PYTHONPATH", "PYTHONUNBUFFERED")
# torch's own settings (compile, Triton, allocator): a setting that reached the warm-up run but not
# the trainings would change inductor's cache key, and every training would compile again.
TORCH_ENV_PREFIXES = ("TORCHINDUCTOR_", "TRITON_", "TORCH_", "PYTORCH_")
TRAINING_ENV_PREFIXES = ("AUTORESEARCH_", *TORCH_ENV_PREFIXES)
# Compile caches: default to the private /tmp (lost after the run) unless the node names its own.
COMPILE_CACHE_DEFAULTS = {"TRITON_CACHE_DIR": f"{SANDBOX_TMP}/triton",
                          "TORCHINDUCTOR_CACHE_DIR": f"{SANDBOX_TMP}/torchinductor"}


class SandboxUnavailable(RuntimeError):
    """bwrap is missing or cannot create its namespaces here; the message is one line."""


@dataclass(frozen=True)
class Sandboxed:
    """A command wrapped in bwrap, and the exact environment to start it with."""
    argv: list[str]
    env: dict[str, str]


# ---------------------------------------------------------------- pure

def _allowed_in_training(name: str) -> bool:
    return (name in TRAINING_ENV_NAMES or name.startswith(TRAINING_ENV_PREFIXES)) and not is_secret_name(name)


def minimal_env(extra: Mapping[str, str] | None = None, source: Mapping[str, str] | None = None) -> dict[str, str]:
    """A training's environment: PATH, HOME, LANG, TMPDIR, CUDA_VISIBLE_DEVICES, PYTHONPATH, the
    CUDA library paths, the C toolchain, AUTORESEARCH_* and torch's settings (TORCH_ENV_PREFIXES) from `source` (default
    os.environ), updated with `extra`. Nothing else, from either, and never a secret-looking name."""
    source = os.environ if source is None else source
    env = {name: value for name, value in source.items() if _allowed_in_training(name)}
    env.update({name: value for name, value in (extra or {}).items() if _allowed_in_training(name)})
    env.setdefault("PATH", os.defpath)
    env.setdefault("LANG", "C.UTF-8")
    return env


def _paths(paths: Iterable[str | os.PathLike]) -> list[str]:
    return [os.path.abspath(p) for p in paths]


def bwrap_argv(command: Sequence[str], *, worktree: str | os.PathLike, data_cache: str | os.PathLike | None,
               mode: str = TRAINING, gpu_devices: Iterable[str] = (), writable: Iterable[str | os.PathLike] = (),
               readonly: Iterable[str | os.PathLike] = (), hidden: Iterable[str | os.PathLike] = (),
               chdir: str | os.PathLike | None = None, bwrap: str = "bwrap") -> list[str]:
    """The bwrap command line that runs `command` in `worktree` (its working directory).

    `data_cache`: bound read-only (None: nothing to bind; it is read-only like the rest, or
    hidden under the private /tmp). `writable`: further read-write paths (a persistent compile
    cache); `readonly`: paths bound read-only last, so they are visible even under the private
    /tmp and win over the worktree (a virtual environment living in /tmp; `prepare/` inside the
    worktree). Later binds cover earlier ones, hence the order: the root, then /dev, /proc and
    /tmp, then what is re-exposed. An agent also gets its HOME directory made in the private /tmp.
    """
    if mode not in MODES:
        raise ValueError(f"sandbox mode must be one of {', '.join(MODES)}, got {mode!r}")
    worktree = os.path.abspath(worktree)
    argv = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", SANDBOX_TMP]
    if mode == AGENT:
        argv += ["--dir", AGENT_HOME]
    for device in gpu_devices:
        argv += ["--dev-bind", device, device]
    for path in _paths(writable):
        argv += ["--bind", path, path]
    argv += ["--bind", worktree, worktree]
    for path in _paths([data_cache] if data_cache is not None else []) + _paths(readonly):
        argv += ["--ro-bind", path, path]
    for path in _paths(hidden):
        if os.path.isdir(path):
            argv += ["--tmpfs", path]
        elif os.path.exists(path):
            argv += ["--ro-bind", "/dev/null", path]
    argv += ["--unshare-all"] + (["--share-net"] if mode == AGENT else [])
    argv += ["--die-with-parent", "--chdir", os.path.abspath(chdir or worktree), "--"]
    return argv + list(command)


def sandbox_env(env: Mapping[str, str], data_cache: str | os.PathLike,
                kept_caches: Iterable[str] = ()) -> dict[str, str]:
    """`env` adjusted to the sandbox's filesystem: temp files in the private /tmp (the host's TMPDIR
    is read-only in there), the data cache named explicitly (its default under HOME is no
    guarantee), and each compile cache in /tmp unless it is one of `kept_caches` (host
    directories bound read-write, so compiled kernels survive the run)."""
    env = dict(env)
    env["TMPDIR"] = SANDBOX_TMP
    env["AUTORESEARCH_CACHE"] = os.path.abspath(data_cache)
    kept = set(kept_caches)
    for name, default in COMPILE_CACHE_DEFAULTS.items():
        path = env.get(name)
        if not path or not (_under(path, SANDBOX_TMP) or path in kept):
            env[name] = default
    return env


def agent_env(env: Mapping[str, str]) -> dict[str, str]:
    """An agent's `env` (its minimal environment, its own key) with HOME and TMPDIR in the
    private /tmp: writable there, and the host's HOME never touched."""
    return {**env, "HOME": AGENT_HOME, "TMPDIR": SANDBOX_TMP}


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


# ---------------------------------------------------------------- the machine

def _probe_argv(bwrap: str) -> list[str]:
    """The flags a real sandbox uses, so a refused /proc mount or an old bwrap shows up now."""
    return bwrap_argv(["true"], worktree=tempfile.gettempdir(), data_cache="/", bwrap=bwrap)


@functools.lru_cache(maxsize=1)
def probe() -> str | None:
    """None when bwrap works here, else why not (one line). Tried once per process."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "--sandbox needs bubblewrap with user namespaces: bwrap is not installed (apt-get install bubblewrap)"
    try:
        result = subprocess.run(_probe_argv(bwrap), capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
                                env={"PATH": os.environ.get("PATH", os.defpath)})
    except (OSError, subprocess.SubprocessError) as error:
        return f"--sandbox needs bubblewrap with user namespaces: {error}"
    if result.returncode != 0:
        detail = " ".join(result.stderr.split()) or f"bwrap exited with code {result.returncode}"
        return f"--sandbox needs bubblewrap with user namespaces: {detail}"
    return None


def available() -> bool:
    return probe() is None


def require() -> None:
    """Raise SandboxUnavailable (one line) unless sandboxes work on this node."""
    reason = probe()
    if reason:
        raise SandboxUnavailable(reason)


def gpu_device_nodes(dev: str = "/dev") -> list[str]:
    """/dev/nvidia0, /dev/nvidiactl, /dev/nvidia-uvm, /dev/nvidia-caps ... that exist here."""
    return sorted(glob.glob(os.path.join(dev, "nvidia*")))


def python_paths_under_tmp() -> list[str]:
    """This Python's installation, when it lives in /tmp (the sandbox's /tmp is empty)."""
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix)}
    return sorted(p for p in prefixes if _under(p, SANDBOX_TMP))


def program_under_tmp(command: Sequence[str]) -> list[str]:
    """The command's program file, when it is a path in /tmp (hidden by the private /tmp)."""
    program = command[0] if command else ""
    return [program] if os.path.isabs(program) and _under(os.path.abspath(program), SANDBOX_TMP) else []


def sandboxed(command: Sequence[str], *, worktree: str | os.PathLike, env: Mapping[str, str],
              data_cache: str | os.PathLike | None = None, mode: str = TRAINING,
              readonly: Iterable[str | os.PathLike] = (), writable: Iterable[str | os.PathLike] = (),
              hidden: Iterable[str | os.PathLike] = (), chdir: str | os.PathLike | None = None) -> Sandboxed:
    """`command` wrapped for this node: its Python and the program itself re-exposed when they
    live in /tmp; a training also gets the GPU device nodes and the node's own compile caches
    (when the environment names existing ones) kept across runs, and needs its `data_cache`; an
    agent gets its private HOME. Raises SandboxUnavailable."""
    require()
    readonly = [*python_paths_under_tmp(), *program_under_tmp(command), *readonly]
    bwrap = shutil.which("bwrap") or "bwrap"
    if mode == AGENT:
        gpu_devices, env = [], agent_env(env)
    else:
        if data_cache is None:
            raise ValueError("a training's sandbox needs its data cache")
        caches = [env[name] for name in COMPILE_CACHE_DEFAULTS
                  if env.get(name) and not _under(env[name], SANDBOX_TMP) and os.path.isdir(env[name])]
        gpu_devices, env = gpu_device_nodes(), sandbox_env(env, data_cache, kept_caches=caches)
        writable = [*caches, *writable]
    argv = bwrap_argv(command, worktree=worktree, data_cache=data_cache, mode=mode, gpu_devices=gpu_devices,
                      writable=writable, readonly=readonly, hidden=hidden, chdir=chdir, bwrap=bwrap)
    return Sandboxed(argv, env)
