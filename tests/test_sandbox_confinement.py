"""--sandbox confines trainings, the evaluator's model server (it runs in a training's sandbox)
and agents (issue 27): they see an allowlist of the host's filesystem and nothing else, only
their own processes, no network (an agent: its model's endpoint alone, through the egress
proxy), and leave nothing running behind them. A Python or a virtual environment in /tmp still
works. Real bubblewrap and processes; loopback servers stand in for the model API and for Ray."""
from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import time
import uuid
import venv
from pathlib import Path

import pytest

from population import egress, sandbox
from population.sandbox import AGENT, TRAINING, minimal_env
from test_egress import no_proxy_left_behind, serve_http   # noqa: F401  (autouse: agents' proxies closed)
from test_sandbox import layout                      # noqa: F401  (a fixture: a worktree and a data cache)
from test_sandbox_agents import sleepers_alive

pytestmark = pytest.mark.skipif(not sandbox.available(), reason=f"bwrap cannot run here: {sandbox.probe()}")

SECRET = "PLANTED-host-secret-0123456789"
CHECKOUT = Path(sandbox.__file__).resolve().parents[1]


def boxed(command: list[str], worktree: Path, cache: Path, mode: str, env: dict | None = None) -> sandbox.Sandboxed:
    """`command` in a sandbox of `mode`; an agent's gets no data cache, as in the worker."""
    return sandbox.sandboxed(command, worktree=worktree, data_cache=cache if mode == TRAINING else None,
                             env=env or minimal_env(), mode=mode)


def inside(code: str, worktree: Path, cache: Path, mode: str = TRAINING, env: dict | None = None,
           python: str = sys.executable) -> object:
    """Run Python `code` in a sandbox; it prints one JSON value, returned here."""
    box = boxed([python, "-c", code], worktree, cache, mode, env)
    result = subprocess.run(box.argv, env=box.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout
    return json.loads(result.stdout)


def wait_for(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# ---------------------------------------------------------------- the filesystem

@pytest.fixture
def planted(tmp_path) -> list[Path]:
    """A secret file in the host's /tmp beside the worktree, and one under the real HOME."""
    home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    beside = tmp_path / "planted" / "secret.txt"
    in_home = home / ".cache" / f"autoresearch-planted-{uuid.uuid4().hex[:8]}" / "secret.txt"
    for path in (beside, in_home):
        path.parent.mkdir(parents=True)
        path.write_text(SECRET)
    yield [beside, in_home]
    shutil.rmtree(in_home.parent, ignore_errors=True)


_LOOK = """
import json, os
def look(path):
    try:
        return sorted(os.listdir(path)) if os.path.isdir(path) else open(path).read()
    except OSError as error:
        return type(error).__name__
print(json.dumps({path: look(path) for path in %r}))
"""


@pytest.mark.parametrize("mode", [TRAINING, AGENT])
def test_nothing_of_the_host_is_readable_but_what_the_process_needs(layout, planted, tmp_path, mode):
    worktree, cache = layout
    beside, in_home = planted
    (worktree / "train.py").write_text("the train file")
    looked = [str(p) for p in (beside, in_home, in_home.parent.parent, CHECKOUT / "population" / "sandbox.py",
                               tmp_path, worktree / "train.py", cache / "tokenizer.json", "/etc/shadow",
                               "/etc/ssl/private", "/etc/passwd")]
    got = inside(_LOOK % looked, worktree, cache, mode)
    assert got[str(beside)] == got[str(in_home)] == "FileNotFoundError"
    assert in_home.parent.name not in got[str(in_home.parent.parent)]            # not even its name
    assert got[str(CHECKOUT / "population" / "sandbox.py")] == "FileNotFoundError"   # the project's checkout
    assert got["/etc/shadow"] == got["/etc/ssl/private"] == "FileNotFoundError" and "root:" in got["/etc/passwd"]
    assert got[str(worktree / "train.py")] == "the train file"
    if mode == TRAINING:     # of the host's /tmp, only what was bound: the worktree and the data cache
        assert got[str(tmp_path)] == ["cache", "worktree"] and got[str(cache / "tokenizer.json")] == "the tokenizer"
    else:
        assert got[str(tmp_path)] == ["worktree"]


@pytest.mark.parametrize("mode", [TRAINING, AGENT])
def test_proc_shows_only_the_sandboxs_own_processes(layout, mode):
    worktree, cache = layout
    code = ("import json, os; print(json.dumps([open(f'/proc/{p}/cmdline', 'rb').read().split(b'\\0')[0].decode()"
            " for p in os.listdir('/proc') if p.isdigit()]))")
    programs = inside(code, worktree, cache, mode)
    # bwrap's init, the agent's forwarder, the command itself: no host process, pytest's included
    assert sorted(map(os.path.basename, programs)) == ["bwrap"] + [os.path.basename(sys.executable)] * (
        2 if mode == AGENT else 1)


@pytest.fixture(scope="module")
def venv_in_tmp(tmp_path_factory) -> Path:
    """A virtual environment in /tmp (python -m venv --system-site-packages), which the private
    /tmp would hide."""
    root = tmp_path_factory.mktemp("venv") / "venv"
    if not str(root).startswith(sandbox.SANDBOX_TMP + "/"):
        pytest.skip("pytest's temporary directories are not in /tmp here")
    venv.create(root, system_site_packages=True, with_pip=False, symlinks=True)
    return root


def test_a_virtual_environment_in_tmp_runs_sandboxed(layout, venv_in_tmp):
    worktree, cache = layout
    python = str(venv_in_tmp / "bin" / "python")
    code = "import importlib.util, json, sys; print(json.dumps([sys.prefix, bool(importlib.util.find_spec('pytest'))]))"
    assert inside(code, worktree, cache, python=python) == [str(venv_in_tmp), True]   # the host's packages too


def test_a_driver_running_from_a_virtual_environment_in_tmp_sandboxes_its_trainings(layout, venv_in_tmp):
    """The worker's own Python in /tmp (sys.executable, which the trainings run): it is bound."""
    worktree, cache = layout
    driver = ("import json, subprocess, sys\nfrom population import sandbox\n"
              "box = sandbox.sandboxed([sys.executable, '-c', 'import sys; print(sys.prefix)'], worktree=sys.argv[1],"
              " data_cache=sys.argv[2], env=sandbox.minimal_env())\n"
              "done = subprocess.run(box.argv, env=box.env, capture_output=True, text=True)\n"
              "print(json.dumps([done.returncode, done.stdout.strip(), done.stderr[-500:]]))")
    result = subprocess.run([str(venv_in_tmp / "bin" / "python"), "-c", driver, str(worktree), str(cache)],
                            capture_output=True, text=True, timeout=60,
                            env={**minimal_env(), "PYTHONPATH": str(CHECKOUT)})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [0, str(venv_in_tmp), ""]


def test_the_toolchain_the_environment_names_runs_sandboxed_wherever_it_is_installed(layout, tmp_path):
    """torch.compile runs the node's CC/CXX (a GPU node's: /opt/gcc/bin/gcc), which needs its
    whole installation, and searches CPATH."""
    worktree, cache = layout
    gcc = tmp_path / "opt" / "gcc"
    (gcc / "bin").mkdir(parents=True)
    (gcc / "lib").mkdir()
    (gcc / "lib" / "specs").write_text("the specs")
    (gcc / "bin" / "cc").write_text('#!/bin/sh\ncat "$(dirname "$0")/../lib/specs" "$CPATH/stdio.h"\n')
    (gcc / "bin" / "cc").chmod(0o755)
    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "stdio.h").write_text(" and the headers")
    env = minimal_env({"CC": str(gcc / "bin" / "cc"), "CPATH": str(tmp_path / "include")})
    box = boxed(["/bin/sh", "-c", '"$CC"'], worktree, cache, TRAINING, env)
    result = subprocess.run(box.argv, env=box.env, capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stdout) == (0, "the specs and the headers"), result.stderr


# ---------------------------------------------------------------- the network

_AGENT_NETWORK = """
import json, os, socket, urllib.error, urllib.parse, urllib.request
MODEL, RAY = %d, %d
def http(port, data=None):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/messages", data=data, timeout=10) as answer:
            return [answer.status, answer.read().decode()]
    except urllib.error.HTTPError as error:
        return [error.code, error.read().decode()]
def direct(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        return "connected"
    except OSError as error:
        return type(error).__name__
def tunnel(port):
    proxy = urllib.parse.urlsplit(os.environ["HTTPS_PROXY"])
    with socket.create_connection((proxy.hostname, proxy.port), timeout=10) as s:
        s.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\\r\\n\\r\\nGET / HTTP/1.1\\r\\nConnection: close\\r\\n\\r\\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data.decode().split("\\r\\n")[0] + " ... " + data.decode().rsplit("\\n", 1)[-1]
print(json.dumps({"get": http(MODEL), "post": http(MODEL, b"prompt"), "ray": http(RAY),
                  "tunnel": tunnel(MODEL), "ray_tunnel": tunnel(RAY), "direct": [direct(MODEL), direct(RAY)]}))
"""


def test_an_agent_reaches_its_model_through_the_proxy_and_nothing_else(layout):
    worktree, cache = layout
    with serve_http(b"the model answers") as (model, seen), serve_http(b"ray's secrets") as (ray, ray_seen):
        env = {"PATH": os.environ["PATH"], "ANTHROPIC_API_KEY": "sk-ant-test-0123456789",
               "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{model}"}
        got = inside(_AGENT_NETWORK % (model, ray), worktree, cache, AGENT, env=env)
    assert got["get"] == got["post"] == [200, "the model answers"]
    assert [request.splitlines()[0] for request in seen[:2]] == ["GET /v1/messages HTTP/1.1",
                                                                  "POST /v1/messages HTTP/1.1"]
    assert got["tunnel"] == "HTTP/1.1 200 Connection Established ... the model answers"
    refusal = f"egress to 127.0.0.1:{ray} is not allowed from this sandbox\n"
    assert got["ray"] == [403, refusal] and got["ray_tunnel"].startswith("HTTP/1.1 403 Forbidden")
    assert got["direct"] == ["ConnectionRefusedError"] * 2          # no route but the proxy, even to the model
    assert ray_seen == []
    refused = egress.shared_proxy([f"127.0.0.1:{model}"]).refused
    assert {f"GET 127.0.0.1:{ray}", f"CONNECT 127.0.0.1:{ray}"} <= set(refused)


# ---------------------------------------------------------------- processes

def _sleeper(mode: str) -> str:
    """A `sleep` argument no other test (or test run) uses."""
    return f"{1000 + os.getpid() % 1000}.{MODES_ORDER.index(mode)}{uuid.uuid4().int % 1000:03d}"


MODES_ORDER = (TRAINING, AGENT)


@pytest.mark.parametrize("mode", [TRAINING, AGENT])
def test_a_daemon_left_behind_dies_when_the_sandboxed_command_exits(layout, mode):
    worktree, cache = layout
    seconds = _sleeper(mode)
    # the background job is a forked shell before it execs setsid, then sleep: wait for the sleep
    script = (f"setsid sleep {seconds} </dev/null >/dev/null 2>&1 & pid=$!; for i in $(seq 100); do "
              f"c=$(tr '\\0' ' ' < /proc/$pid/cmdline); [ \"$c\" = 'sleep {seconds} ' ] && break; sleep 0.05; done; "
              "echo \"$c\"")
    box = boxed(["/bin/sh", "-c", script], worktree, cache, mode)
    result = subprocess.run(box.argv, env=box.env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.split() == ["sleep", seconds], result.stderr   # it did start
    assert wait_for(lambda: not sleepers_alive(seconds), 2.0), "a daemon of the sandbox outlived it"


def test_killing_bwrap_alone_kills_every_process_inside(layout):
    worktree, cache = layout
    seconds = _sleeper(TRAINING)
    box = boxed(["/bin/sh", "-c", f"setsid sleep {seconds} </dev/null >/dev/null 2>&1 & exec sleep {seconds}"],
                worktree, cache, TRAINING)
    proc = subprocess.Popen(box.argv, env=box.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: len(sleepers_alive(seconds)) == 2), "the sleepers never started"
        proc.kill()                  # bwrap's own process only, not its process group
        proc.wait(timeout=10)
        assert wait_for(lambda: not sleepers_alive(seconds), 5.0), "processes of the sandbox outlived bwrap"
    finally:
        proc.kill()
        proc.wait()


def test_a_training_writes_the_shared_compile_caches_even_when_the_data_cache_is_in_tmp(tmp_path):
    """The data cache's compile caches are host directories, bound read-write, wherever the cache
    lives (a cache in /tmp is a host path, not the sandbox's private /tmp); the rest stays read-only."""
    cache, out = tmp_path / "cache", tmp_path / "out"
    cache.mkdir()
    out.mkdir()
    script = ("import os\n"
              "os.makedirs(os.path.join(os.environ['TORCHINDUCTOR_CACHE_DIR'], 'x'))\n"
              "open(os.path.join(os.environ['TRITON_CACHE_DIR'], 'k'), 'w').write('kernel')\n"
              "try:\n    open(os.path.join(os.environ['AUTORESEARCH_CACHE'], 'data.txt'), 'w')\n"
              "except OSError as e:\n    print('cache', e.errno)\n")
    wrapped = sandbox.sandboxed([sys.executable, "-c", script], worktree=out, data_cache=cache,
                                env={"PATH": os.environ["PATH"]}, mode=sandbox.TRAINING)
    done = subprocess.run(wrapped.argv, env=wrapped.env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (cache / "torch_compile" / "x").is_dir() and (cache / "triton" / "k").read_text() == "kernel"
    assert done.stdout.strip() == "cache 30" and not (cache / "data.txt").exists()     # EROFS
