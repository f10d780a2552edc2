"""`--sandbox`: run trainings and agents inside bubblewrap (`bwrap`).

A sandboxed process sees an allowlist of the host, not the host's root read-only:

- the system, read-only: /usr and the /bin, /sbin, /lib* beside it (symlinks on a merged-/usr
  system), the few entries of /etc that programs read (`ETC_ENTRIES`: the dynamic linker's cache,
  users and groups, name service and hosts, time zone, public TLS certificates, alternatives;
  never shadow nor any private key), and /sys (the CUDA driver reads it);
- the runtime of its command, read-only (`runtime_paths`): this Python's installation (its
  prefixes, the virtual environment, the directories on sys.path that are installations, each
  also where its symlinks lead), the program and the interpreter its `#!` line names, the
  compilers CC/CXX/CUDAHOSTCXX name with their installations (a GPU node's CC was
  /opt/gcc/bin/gcc), CUDA_HOME, the LD_LIBRARY_PATH, CPATH, LIBRARY_PATH... directories;
  wherever they live, /tmp included, but never a
  directory that holds more than an installation (`_too_broad`: HOME or above it, the project's
  checkout, a git checkout, /tmp itself, a directory above a path the caller binds);
- what the caller names: the worktree (read-write), the data cache and `readonly` paths
  (read-only), `writable` paths, `hidden` ones covered;
- a private /tmp, a fresh /proc of its own PID namespace (only its own processes), a minimal
  /dev. The rest of its root is an empty tmpfs, made read-only: the host's HOME, /root, /work,
  the other worktrees, the run store and the rest of /tmp are not there at all.

Every namespace is unshared. bwrap's own init is PID 1 of the sandbox's PID namespace and the
sandbox dies with its parent: when the command exits, or bwrap is killed, the kernel kills every
process left inside, a daemon that called setsid included.

- A training (and the trusted evaluator's model server) gets the GPU device nodes and no network
  at all (its own empty network namespace, so not even a loopback server of the host is
  reachable).
- An agent (a subprocess agent: claude, codex, command:) gets no GPU, a private HOME inside the
  private /tmp (tools like Claude Code write their config and state under ~), and no network
  either, but for its model's endpoint(s): an allowlisting proxy outside, reached through a
  forwarder on 127.0.0.1 inside that runs the agent's command (population/egress.py says how
  and why); HTTPS_PROXY and friends point at it.

The environment is exactly the one given (plus HOME, TMPDIR, the caches pointed into the sandbox
and, for an agent, the proxy's variables). It is handed to bwrap's own process (bwrap passes its
environment to the command unchanged) rather than put on the command line with --setenv: an
agent's API key on a command line could be read by any user of the node in `ps`. `Sandboxed`
carries both, so a caller does `subprocess.Popen(s.argv, env=s.env, ...)`.

`sandbox_env` and `agent_env` are pure, `bwrap_argv` too but for looking which system paths
exist; `runtime_paths`, `available`, `gpu_device_nodes` and `sandboxed` look at the machine.
"""
from __future__ import annotations

import functools
import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from population import egress
from population.agents.env import is_secret_name

TRAINING, AGENT = "training", "agent"
MODES = (TRAINING, AGENT)
SANDBOX_TMP = "/tmp"
AGENT_HOME = f"{SANDBOX_TMP}/home"      # an agent's private HOME, gone with its sandbox
PROBE_TIMEOUT_S = 20.0
# The system, read-only; one that is a symlink (/bin -> usr/bin on a merged-/usr system) is made
# again as that symlink.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# What programs read in /etc: the dynamic linker, users and groups (never shadow: no passwords),
# name service and hosts, time zone, Debian's alternatives (/usr/bin/c++ is a link through them,
# torch.compile needs it), Debian's Python customization, and of TLS the public certificates and
# settings only (never ssl/private, pki/tls/private: keys). An agent also gets the resolver's
# configuration. Not gitconfig (it may carry credentials), nor nvidia (licence tokens): not needed.
ETC_ENTRIES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "passwd", "group", "nsswitch.conf", "host.conf",
               "hosts", "gai.conf", "protocols", "services", "localtime", "timezone", "alternatives", "os-release",
               "mime.types", "python3*", "ssl/certs", "ssl/cert.pem", "ssl/openssl.cnf", "ca-certificates",
               "ca-certificates.conf", "pki/tls/certs", "pki/tls/cert.pem", "pki/tls/openssl.cnf", "pki/ca-trust",
               "crypto-policies")
AGENT_ETC_ENTRIES = ("resolv.conf",)
# Never re-exposed as a runtime path: there already (the system, /proc, /dev, /sys) or allowlisted (/etc).
NOT_RUNTIME = (*SYSTEM_DIRS, "/etc", "/proc", "/dev", "/sys")
# Inside an agent's sandbox: the egress proxy's socket and the forwarder (population/egress.py).
EGRESS_DIR = "/run/egress"
EGRESS_SOCKET = f"{EGRESS_DIR}/proxy.sock"
FORWARDER = f"{EGRESS_DIR}/egress.py"

# The C/C++ toolchain torch.compile builds with (inductor's C++ parts, Triton's launcher stubs).
# CXX is part of inductor's cache key: trainings without the node's CXX missed the cache that a
# plain run had warmed and compiled for 30 s instead of 6 (4 H200s, bench/gpu/compile_cache.sh).
TOOLCHAIN_ENV_NAMES = ("CC", "CXX", "CUDAHOSTCXX", "CFLAGS", "CXXFLAGS", "LDFLAGS", "CPATH", "LIBRARY_PATH",
                       "C_INCLUDE_PATH", "CPLUS_INCLUDE_PATH")
# The node's basics a training inherits, sandboxed or not (training.training_env uses the same list).
NODE_ENV_NAMES = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "LD_LIBRARY_PATH", "CUDA_HOME",
                  "CUDA_PATH", "HF_HOME", "HF_HUB_OFFLINE", "XDG_CACHE_HOME", "VIRTUAL_ENV", "CONDA_PREFIX",
                  *TOOLCHAIN_ENV_NAMES)
# The compilers the toolchain names (a whole installation each: gcc needs its lib/ and libexec/;
# a node's CC may well be /opt/gcc/bin/gcc) and the directories it searches.
TOOLCHAIN_PROGRAM_NAMES = ("CC", "CXX", "CUDAHOSTCXX")
SEARCH_PATH_NAMES = ("LD_LIBRARY_PATH", "CPATH", "LIBRARY_PATH", "C_INCLUDE_PATH", "CPLUS_INCLUDE_PATH")
# What a training may see of its node's environment: the basics, the run's settings, compile caches.
TRAINING_ENV_NAMES = (*NODE_ENV_NAMES, "CUDA_VISIBLE_DEVICES", "PYTHONPATH", "PYTHONUNBUFFERED")
# torch's own settings (compile, Triton, allocator): a setting that reached the warm-up run but not
# the trainings would change inductor's cache key, and every training would compile again.
TORCH_ENV_PREFIXES = ("TORCHINDUCTOR_", "TRITON_", "TORCH_", "PYTORCH_")
TRAINING_ENV_PREFIXES = ("AUTORESEARCH_", *TORCH_ENV_PREFIXES)
# Compile caches: default to the private /tmp (lost after the run) unless the node names its own.
# Where a plain run of the engine keeps its compile caches (in the data cache): a sandboxed training
# shares them, read-write, unless the node names its own. Compiling a 50 M model cold takes about
# 40 s on an H100 against 6 s from the cache, every experiment. The price: a training can write
# what a later training (or model server) of another member loads from there (README, 'Security').
SHARED_COMPILE_CACHES = {"TORCHINDUCTOR_CACHE_DIR": "torch_compile", "TRITON_CACHE_DIR": "triton"}
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


def system_binds(mode: str = TRAINING) -> list[str]:
    """bwrap's arguments for the system part of the sandbox: SYSTEM_DIRS, the /etc entries of
    `mode`, /sys; each only where it exists here."""
    argv = []
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    for name in ETC_ENTRIES + (AGENT_ETC_ENTRIES if mode == AGENT else ()):
        for path in sorted(glob.glob(os.path.join("/etc", name))):
            if os.path.exists(path):              # a dangling symlink cannot be bound
                argv += ["--ro-bind", path, path]
    if os.path.isdir("/sys"):
        argv += ["--ro-bind", "/sys", "/sys"]
    return argv


def bwrap_argv(command: Sequence[str], *, worktree: str | os.PathLike, data_cache: str | os.PathLike | None,
               mode: str = TRAINING, gpu_devices: Iterable[str] = (), writable: Iterable[str | os.PathLike] = (),
               readonly: Iterable[str | os.PathLike] = (), hidden: Iterable[str | os.PathLike] = (),
               chdir: str | os.PathLike | None = None, bwrap: str = "bwrap",
               runtime: Iterable[str | os.PathLike] = (), egress_socket: str | os.PathLike | None = None,
               python: str = sys.executable) -> list[str]:
    """The bwrap command line that runs `command` in `worktree` (its working directory).

    The root starts empty: the system (`system_binds`), /dev, a fresh /proc and the private /tmp,
    then `runtime` (read-only: what the command needs to start, see `runtime_paths`), then the
    caller's paths. `data_cache`: bound read-only (None: nothing to bind). `writable`: further
    read-write paths, bound after it (the compile caches inside it); `readonly`: paths bound read-only last, so
    they win over the worktree (`prepare/` inside it; the worker's git directories). `hidden`:
    covered by an empty directory, or /dev/null for a file. Later binds cover earlier ones, hence
    the order; a path in /tmp is bound after the private /tmp, so it is visible there. Last, the
    root itself is made read-only.

    An agent also gets its HOME directory made in the private /tmp, and with `egress_socket` (the
    host path of an egress.EgressProxy's socket) its only way out: that socket and the forwarder
    are bound in, and `command` runs under the forwarder, started by `python` (`runtime` must
    hold its installation). A training never has one.
    """
    if mode not in MODES:
        raise ValueError(f"sandbox mode must be one of {', '.join(MODES)}, got {mode!r}")
    if egress_socket is not None and mode != AGENT:
        raise ValueError("only an agent's sandbox has an egress proxy; a training has no network")
    worktree = os.path.abspath(worktree)
    argv = [bwrap, *system_binds(mode), "--dev", "/dev", "--proc", "/proc", "--tmpfs", SANDBOX_TMP]
    if mode == AGENT:
        argv += ["--dir", AGENT_HOME]
    for path in _paths(runtime):
        argv += ["--ro-bind", path, path]
    if egress_socket is not None:
        argv += ["--ro-bind", os.path.abspath(egress_socket), EGRESS_SOCKET,
                 "--ro-bind", os.path.realpath(egress.__file__), FORWARDER]
        command = [python, "-I", "-S", FORWARDER, "forward", EGRESS_SOCKET, str(egress.FORWARD_PORT), "--", *command]
    for device in gpu_devices:
        argv += ["--dev-bind", device, device]
    for path in _paths([data_cache] if data_cache is not None else []):
        argv += ["--ro-bind", path, path]
    for path in _paths(writable):               # after the data cache: its compile caches are writable
        argv += ["--bind", path, path]
    argv += ["--bind", worktree, worktree]
    for path in _paths(readonly):
        argv += ["--ro-bind", path, path]
    for path in _paths(hidden):
        if os.path.isdir(path):
            argv += ["--tmpfs", path]
        elif os.path.exists(path):
            argv += ["--ro-bind", "/dev/null", path]
    argv += ["--remount-ro", "/", "--unshare-all", "--die-with-parent",
             "--chdir", os.path.abspath(chdir or worktree), "--"]
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

def _probe_argv(bwrap: str, worktree: str) -> list[str]:
    """The flags a real sandbox uses, so a refused /proc mount or an old bwrap shows up now."""
    return bwrap_argv(["true"], worktree=worktree, data_cache=None, bwrap=bwrap)


@functools.lru_cache(maxsize=1)
def probe() -> str | None:
    """None when bwrap works here, else why not (one line). Tried once per process."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "--sandbox needs bubblewrap with user namespaces: bwrap is not installed (apt-get install bubblewrap)"
    try:
        with tempfile.TemporaryDirectory(prefix="sandbox-probe-") as worktree:
            result = subprocess.run(_probe_argv(bwrap, worktree), capture_output=True, text=True,
                                    timeout=PROBE_TIMEOUT_S, env={"PATH": os.environ.get("PATH", os.defpath)})
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


# ---------------------------------------------------------------- what a command needs to run

def runtime_paths(command: Sequence[str], env: Mapping[str, str], keep_out: Iterable[str | os.PathLike] = (),
                  cwd: str | os.PathLike | None = None) -> list[str]:
    """What `command` needs, read-only, to start and run: this Python's installation
    (`python_paths`), the command's program (`program_paths`) and the files its arguments name
    by absolute path (a `command:` agent's script), the compilers `env` names with
    their installations (CC, CXX, CUDAHOSTCXX: torch.compile builds with them) and the
    directories it names for CUDA, libraries and headers (CUDA_HOME, CUDA_PATH,
    SEARCH_PATH_NAMES). Each as given and
    where its symlinks lead. Left out: what does not exist, what is in the system (bound anyway),
    what is inside another path of the list, and a directory `_too_broad` to show; `keep_out`
    are the caller's own paths (the worktree, the data cache...): a directory above one of them
    holds more than the sandbox may see (the other experiments). `cwd`: where the command starts
    (a relative program path is found from there)."""
    named = [env.get("CUDA_HOME"), env.get("CUDA_PATH"),
             *(path for name in SEARCH_PATH_NAMES for path in env.get(name, "").split(os.pathsep))]
    compilers = [_which(word, env, cwd) for name in TOOLCHAIN_PROGRAM_NAMES for word in env.get(name, "").split()
                 if not word.startswith("-")]                   # "ccache gcc": both
    # files the command line names (a `command:` agent's script), each alone: the user's own tools
    named_files = [arg for arg in command[1:] if os.path.isabs(arg) and os.path.isfile(arg)]
    candidates = [*python_paths(env), *program_paths(command, env, cwd), *(path for path in named if path), *named_files,
                  *(path for compiler in compilers if compiler for path in _program_files(compiler, installation=True))]
    private = _private_roots(keep_out)
    kept: list[str] = []
    for path in sorted({form for path in candidates for form in _forms(path)}, key=lambda p: (len(p), p)):
        if (not os.path.exists(path) or any(_under(path, root) for root in (*NOT_RUNTIME, *kept))
                or os.path.isdir(path) and _too_broad(path, private)):
            continue
        kept.append(path)
    return sorted(kept)


def python_paths(env: Mapping[str, str]) -> list[str]:
    """This Python's installation: its executable, its prefixes (a virtual environment's, and the
    Python's it was made from), VIRTUAL_ENV and CONDA_PREFIX of `env`, and the directories on
    sys.path but the current directory and those in the project's own checkout (its source and
    tests are no installation; its virtual environment, a prefix, is)."""
    checkout, here = _project_checkout(), _cwd()
    entries = [path for path in sys.path if path and os.path.realpath(path) != here
               and not (checkout and _under(os.path.realpath(path), checkout))]
    prefixes = [sys.executable, sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix,
                env.get("VIRTUAL_ENV"), env.get("CONDA_PREFIX")]
    return [os.path.abspath(path) for path in [*prefixes, *entries] if path]


def program_paths(command: Sequence[str], env: Mapping[str, str], cwd: str | os.PathLike | None = None) -> list[str]:
    """The command's program (looked up on `env`'s PATH when it is a bare name, from `cwd` when it
    is relative) and what it needs to start (`_program_files`), and the same for the interpreter
    its `#!` line names."""
    program = _which(command[0], env, cwd) if command else None
    if program is None:
        return []
    interpreter = _shebang_interpreter(os.path.realpath(program), env)
    return _program_files(program) + (_program_files(interpreter) if interpreter else [])


def _which(name: str, env: Mapping[str, str], cwd: str | os.PathLike | None = None) -> str | None:
    if os.sep in name:
        return os.path.abspath(os.path.join(cwd or _cwd() or "/", name))
    return shutil.which(name, path=env.get("PATH", os.defpath))


def _program_files(program: str, installation: bool = False) -> list[str]:
    """A program, the file it links to, and what it cannot start without: the installation of a
    Python interpreter in a bin/ directory (and the Python a virtual environment was made from,
    pyvenv.cfg's `home`), with `installation` that of any program in a bin/ directory (a
    compiler), or the package directory of a script inside node_modules (claude, codex
    installed by npm)."""
    real = os.path.realpath(program)
    paths = [program, real]
    for path in (program, real):
        bin_dir = os.path.dirname(path)
        if os.path.basename(bin_dir) == "bin" and (installation or os.path.basename(path).startswith("python")):
            prefix = os.path.dirname(bin_dir)
            paths += [prefix, *_venv_home(prefix)]
    parts = real.split(os.sep)
    if "node_modules" in parts[:-2]:
        top = parts.index("node_modules")              # the outermost package holds its dependencies
        paths.append(os.sep.join(parts[:top + (3 if parts[top + 1].startswith("@") else 2)]))
    return paths


def _venv_home(prefix: str) -> list[str]:
    """The installation a virtual environment at `prefix` was made from (pyvenv.cfg's home)."""
    try:
        lines = Path(prefix, "pyvenv.cfg").read_text(errors="replace").splitlines()
    except OSError:
        return []
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() == "home" and value.strip():
            home = value.strip()
            return [os.path.dirname(home) if os.path.basename(home) == "bin" else home]
    return []


def _shebang_interpreter(path: str, env: Mapping[str, str]) -> str | None:
    """The interpreter a script's `#!` line names (`#!/usr/bin/env node` looked up on PATH)."""
    try:
        with open(path, "rb") as script:
            first = script.readline(512)
    except OSError:
        return None
    words = first[2:].decode(errors="replace").split() if first.startswith(b"#!") else []
    if words and os.path.basename(words[0]) == "env":
        words = [word for word in words[1:] if not word.startswith("-") and "=" not in word]
        return _which(words[0], env) if words else None
    return words[0] if words else None


@functools.lru_cache(maxsize=1)
def _project_checkout() -> str | None:
    """The checkout this package runs from (None when it is installed as a package)."""
    root = Path(__file__).resolve().parents[1]
    return str(root) if (root / "pyproject.toml").exists() or (root / ".git").exists() else None


def _cwd() -> str | None:
    try:
        return os.path.realpath(os.getcwd())
    except OSError:          # removed under us
        return None


def _private_roots(keep_out: Iterable[str | os.PathLike]) -> set[str]:
    """Paths no directory at or above which is shown as a runtime path: HOME, the project's
    checkout, and `keep_out`."""
    roots = [os.environ.get("HOME"), _project_checkout(), *keep_out]
    try:
        roots.append(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:         # a uid the passwd file does not know
        pass
    return {os.path.realpath(path) for path in roots if path}


def _too_broad(directory: str, private: set[str]) -> bool:
    """A directory that holds more than an installation: the root, a temp directory itself, a git
    checkout, or one at or above a private path (HOME, the project's checkout, the caller's paths)."""
    real = os.path.realpath(directory)
    temps = {SANDBOX_TMP, os.path.realpath(tempfile.gettempdir())}
    return (real == "/" or real in temps or os.path.exists(os.path.join(real, ".git"))
            or any(_under(path, real) for path in private))


def _forms(path: str) -> list[str]:
    """`path` as given and where its symlinks lead."""
    return list(dict.fromkeys([os.path.abspath(path), os.path.realpath(path)]))


def sandboxed(command: Sequence[str], *, worktree: str | os.PathLike, env: Mapping[str, str],
              data_cache: str | os.PathLike | None = None, mode: str = TRAINING,
              readonly: Iterable[str | os.PathLike] = (), writable: Iterable[str | os.PathLike] = (),
              hidden: Iterable[str | os.PathLike] = (), chdir: str | os.PathLike | None = None,
              endpoints: Iterable[str] = ()) -> Sandboxed:
    """`command` wrapped for this node, with the runtime it needs (`runtime_paths`) read-only. A
    training also gets the GPU device nodes and the compile caches kept across runs (the node's
    own when the environment names them, else the data cache's, SHARED_COMPILE_CACHES), and needs
    its `data_cache`. An agent gets
    its private HOME and, as its only network, the egress proxy to its model: the endpoints
    egress.endpoints_from_env finds in its environment plus `endpoints` (host:port or URLs).
    Raises SandboxUnavailable."""
    require()
    readonly, writable, hidden = list(readonly), list(writable), list(hidden)
    bwrap = shutil.which("bwrap") or "bwrap"
    given, egress_socket = env, None
    if mode == AGENT:
        proxy = egress.shared_proxy(egress.endpoints_from_env(env, endpoints))
        gpu_devices, env, egress_socket = [], {**agent_env(env), **egress.proxy_env()}, proxy.path
    else:
        if data_cache is None:
            raise ValueError("a training's sandbox needs its data cache")
        shared = {name: os.path.join(os.path.abspath(data_cache), sub) for name, sub in SHARED_COMPILE_CACHES.items()}
        env = {**shared, **env}            # the node's own compile caches, else the data cache's (as a plain run)
        # a host directory (made here if it is the data cache's), bound read-write; a path in /tmp that
        # does not exist on the host means the sandbox's private /tmp
        caches = [env[name] for name in COMPILE_CACHE_DEFAULTS
                  if env[name] == shared[name] or not _under(env[name], SANDBOX_TMP) or os.path.isdir(env[name])]
        for cache in caches:
            os.makedirs(cache, exist_ok=True)
        gpu_devices, env = gpu_device_nodes(), sandbox_env(env, data_cache, kept_caches=caches)
        writable = [*caches, *writable]
    own = [path for path in (worktree, chdir, data_cache, *readonly, *writable, *hidden) if path is not None]
    runtime = runtime_paths(command, given, keep_out=own, cwd=chdir or worktree)
    argv = bwrap_argv(command, worktree=worktree, data_cache=data_cache, mode=mode, gpu_devices=gpu_devices,
                      writable=writable, readonly=readonly, hidden=hidden, chdir=chdir, bwrap=bwrap,
                      runtime=runtime, egress_socket=egress_socket)
    return Sandboxed(argv, env)
