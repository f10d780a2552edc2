"""--sandbox: the bwrap command line (pure), the training environment, and real sandboxes:
what they may write, read and reach, and what they never see."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from population import sandbox
from population.sandbox import AGENT, TRAINING, bwrap_argv, minimal_env, sandbox_env
from test_egress import no_proxy_left_behind                # noqa: F401  (autouse: agents' proxies closed)

PLANTED = {"OPENAI_API_KEY": "sk-PLANTED-openai-0123456789", "ANTHROPIC_API_KEY": "sk-ant-PLANTED-0123456789",
           "FOO_TOKEN": "PLANTED-foo-token-0123456789", "AUTORESEARCH_API_KEY": "PLANTED-autoresearch-key-01"}


# ---------------------------------------------------------------- pure

def _pairs(argv: list[str], flag: str) -> list[tuple[str, str]]:
    return [(argv[i + 1], argv[i + 2]) for i, word in enumerate(argv) if word == flag]


def test_training_argv_confines_and_cuts_the_network(tmp_path):
    argv = bwrap_argv(["python", "train.py"], worktree=tmp_path / "wt", data_cache=tmp_path / "cache",
                      gpu_devices=["/dev/nvidia0", "/dev/nvidiactl"], runtime=["/opt/py"])
    assert argv[0] == "bwrap" and argv[argv.index("--") + 1:] == ["python", "train.py"]
    assert "--unshare-all" in argv and "--share-net" not in argv and "--die-with-parent" in argv
    # an allowlist, never the host's root: the system, the runtime, the caller's paths
    assert ("/", "/") not in _pairs(argv, "--ro-bind") and ("/usr", "/usr") in _pairs(argv, "--ro-bind")
    assert not {"/etc", "/etc/shadow", "/etc/ssl", "/etc/ssl/private", "/etc/pki"} & {a for a, _ in _pairs(argv, "--ro-bind")}
    assert ("/opt/py", "/opt/py") in _pairs(argv, "--ro-bind") and ("/opt", "/opt") not in _pairs(argv, "--ro-bind")
    assert (str(tmp_path / "wt"),) * 2 in _pairs(argv, "--bind")
    assert (str(tmp_path / "cache"),) * 2 in _pairs(argv, "--ro-bind")
    assert _pairs(argv, "--dev-bind") == [("/dev/nvidia0", "/dev/nvidia0"), ("/dev/nvidiactl", "/dev/nvidiactl")]
    assert argv[argv.index("--chdir") + 1] == str(tmp_path / "wt")
    assert argv[argv.index("--proc") + 1] == "/proc" and argv[argv.index("--remount-ro") + 1] == "/"
    # the worktree and the runtime may live in /tmp: bound after the private /tmp, or they would be hidden
    assert argv.index("--tmpfs") < argv.index("/opt/py") < argv.index(str(tmp_path / "wt"))
    assert argv.index(str(tmp_path / "cache")) < argv.index("--remount-ro")


def test_agent_argv_has_no_network_but_the_proxy_to_its_model(tmp_path):
    argv = bwrap_argv(["claude", "-p"], worktree=tmp_path, data_cache=None, mode=AGENT,
                      egress_socket=tmp_path / "proxy.sock", python="/opt/py/bin/python")
    assert "--unshare-all" in argv and "--share-net" not in argv
    assert (str(tmp_path / "proxy.sock"), sandbox.EGRESS_SOCKET) in _pairs(argv, "--ro-bind")
    assert (str(Path(sandbox.egress.__file__).resolve()), sandbox.FORWARDER) in _pairs(argv, "--ro-bind")
    assert argv[argv.index("--") + 1:] == ["/opt/py/bin/python", "-I", "-S", sandbox.FORWARDER, "forward",
                                           sandbox.EGRESS_SOCKET, str(sandbox.egress.FORWARD_PORT), "--",
                                           "claude", "-p"]
    assert ("/etc/resolv.conf",) * 2 not in _pairs(bwrap_argv(["x"], worktree=tmp_path, data_cache=None), "--ro-bind")
    with pytest.raises(ValueError, match="no network"):
        bwrap_argv(["python"], worktree=tmp_path, data_cache=tmp_path, egress_socket=tmp_path / "proxy.sock")


def test_readonly_paths_win_over_the_worktree(tmp_path):
    protected = tmp_path / "wt" / "prepare"
    argv = bwrap_argv(["x"], worktree=tmp_path / "wt", data_cache=tmp_path, readonly=[protected])
    assert argv.index(str(tmp_path / "wt")) < argv.index(str(protected))


def test_bad_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="sandbox mode"):
        bwrap_argv(["x"], worktree=tmp_path, data_cache=tmp_path, mode="gpu")


def test_minimal_env_keeps_the_run_settings_and_drops_everything_else():
    source = {"PATH": "/usr/bin", "HOME": "/home/u", "LANG": "en_US.UTF-8", "TMPDIR": "/scratch",
              "CUDA_VISIBLE_DEVICES": "3", "AUTORESEARCH_SEED": "1", "TRITON_CACHE_DIR": "/c/triton",
              "TORCHINDUCTOR_CACHE_DIR": "/c/ind", "SSH_AUTH_SOCK": "/run/agent", "AWS_PROFILE": "prod",
              **PLANTED}
    env = minimal_env({"AUTORESEARCH_SEED": "7", "PYTHONPATH": "/wt", "GITHUB_TOKEN": "PLANTED-gh-token-99",
                       "EDITOR": "vim"}, source=source)
    assert env == {"PATH": "/usr/bin", "HOME": "/home/u", "LANG": "en_US.UTF-8", "TMPDIR": "/scratch",
                   "CUDA_VISIBLE_DEVICES": "3", "AUTORESEARCH_SEED": "7", "TRITON_CACHE_DIR": "/c/triton",
                   "TORCHINDUCTOR_CACHE_DIR": "/c/ind", "PYTHONPATH": "/wt"}


def test_sandbox_env_moves_temp_and_unkept_caches_into_the_private_tmp(tmp_path):
    env = sandbox_env({"TMPDIR": "/scratch", "TRITON_CACHE_DIR": "/host/triton",
                       "TORCHINDUCTOR_CACHE_DIR": "/host/inductor"}, tmp_path / "cache",
                      kept_caches=["/host/inductor"])
    assert env["TMPDIR"] == "/tmp" and env["AUTORESEARCH_CACHE"] == str(tmp_path / "cache")
    assert env["TRITON_CACHE_DIR"] == "/tmp/triton"              # not kept: the host path is read-only inside
    assert env["TORCHINDUCTOR_CACHE_DIR"] == "/host/inductor"    # kept: bound read-write


def test_gpu_device_nodes_lists_only_nvidia_nodes(tmp_path):
    for name in ("nvidia0", "nvidiactl", "nvidia-uvm", "null", "dri"):
        (tmp_path / name).touch()
    assert sandbox.gpu_device_nodes(str(tmp_path)) == [str(tmp_path / n) for n in ("nvidia-uvm", "nvidia0", "nvidiactl")]


# ---------------------------------------------------------------- availability

@pytest.fixture
def fresh_probe():
    sandbox.probe.cache_clear()
    yield
    sandbox.probe.cache_clear()


def test_missing_bwrap_is_one_clear_line(fresh_probe, monkeypatch):
    monkeypatch.setattr(sandbox.shutil, "which", lambda name, *a, **k: None)
    assert not sandbox.available()
    with pytest.raises(sandbox.SandboxUnavailable, match="--sandbox needs bubblewrap with user namespaces: bwrap is not installed"):
        sandbox.require()


def test_refused_namespaces_report_bwraps_own_words(fresh_probe, monkeypatch, tmp_path):
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert sandbox.probe() == ("--sandbox needs bubblewrap with user namespaces: "
                               "bwrap: No permissions to creating new namespace")


# ---------------------------------------------------------------- real sandboxes

PROJECT = Path(__file__).resolve().parent.parent

needs_bwrap = pytest.mark.skipif(not sandbox.available(), reason=f"bwrap cannot run here: {sandbox.probe()}")


def _run_inside(code: str, worktree: Path, cache: Path, mode: str = TRAINING, extra: dict | None = None) -> dict:
    """Run Python `code` in a sandbox; it prints one JSON object, returned here."""
    boxed = sandbox.sandboxed([sys.executable, "-c", code], worktree=worktree, data_cache=cache,
                              env=minimal_env(extra), mode=mode)
    result = subprocess.run(boxed.argv, env=boxed.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def layout(tmp_path):
    worktree, cache = tmp_path / "worktree", tmp_path / "cache"
    worktree.mkdir()
    cache.mkdir()
    (cache / "tokenizer.json").write_text("the tokenizer")
    return worktree, cache


_TRY_WRITE = """
import json, sys
def attempt(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        return "ok"
    except OSError as e:
        return type(e).__name__
"""


@needs_bwrap
def test_only_the_worktree_is_writable(layout, tmp_path):
    worktree, cache = layout
    outside = Path(sys.prefix) / "sandbox-escape.txt"          # on the host's root filesystem
    beside = tmp_path / "beside.txt"                            # the host's /tmp, next to the worktree
    private_tmp = f"/tmp/sandbox-scratch-{os.getpid()}-{tmp_path.name}"
    code = _TRY_WRITE + f"""
print(json.dumps({{"inside": attempt({str(worktree / 'out.txt')!r}), "outside": attempt({str(outside)!r}),
                  "beside": attempt({str(beside)!r}), "tmp": attempt({private_tmp!r})}}))"""
    got = _run_inside(code, worktree, cache)
    assert got["inside"] == "ok" and (worktree / "out.txt").read_text() == "x"
    assert got["outside"] != "ok" and not outside.exists()
    assert not beside.exists()                                  # whatever /tmp it saw was its own
    assert got["tmp"] == "ok" and not Path(private_tmp).exists()   # a private /tmp, gone with the sandbox


@needs_bwrap
def test_data_cache_is_readable_not_writable(layout):
    worktree, cache = layout
    code = _TRY_WRITE + f"""
print(json.dumps({{"read": open({str(cache / 'tokenizer.json')!r}).read(),
                  "write": attempt({str(cache / 'tokenizer.json')!r}), "new": attempt({str(cache / 'new')!r}),
                  "cache_env": __import__("os").environ["AUTORESEARCH_CACHE"]}}))"""
    got = _run_inside(code, worktree, cache)
    assert got["read"] == "the tokenizer" and got["cache_env"] == str(cache)
    assert got["write"] == "OSError" and got["new"] == "OSError"
    assert (cache / "tokenizer.json").read_text() == "the tokenizer" and not (cache / "new").exists()


@pytest.fixture
def loopback_server():
    """A TCP server on the host's loopback that answers 'hello' to every connection."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except (socket.timeout, OSError):
                continue
            with conn:
                conn.sendall(b"hello")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


_CONNECT = """
import json, socket
try:
    with socket.create_connection(("127.0.0.1", {port}), timeout=5) as s:
        print(json.dumps(s.recv(5).decode()))
except OSError as e:
    print(json.dumps(type(e).__name__))
"""


@needs_bwrap
def test_training_has_no_network_nor_has_an_agent_but_through_its_proxy(layout, loopback_server):
    worktree, cache = layout
    code = _CONNECT.format(port=loopback_server)
    assert _run_inside(code, worktree, cache, mode=TRAINING) == "ConnectionRefusedError"
    assert _run_inside(code, worktree, cache, mode=AGENT) == "ConnectionRefusedError"   # not the host's loopback


@needs_bwrap
def test_sandboxed_env_holds_no_planted_key(layout, monkeypatch):
    worktree, cache = layout
    for name, value in PLANTED.items():
        monkeypatch.setenv(name, value)
    boxed = sandbox.sandboxed([sys.executable, "-c", "import os, json; print(json.dumps(dict(os.environ)))"],
                              worktree=worktree, data_cache=cache, env=minimal_env({"AUTORESEARCH_SEED": "7"}))
    assert not any(value in word for value in PLANTED.values() for word in boxed.argv)
    result = subprocess.run(boxed.argv, env=boxed.env, capture_output=True, text=True, timeout=60)
    inside = json.loads(result.stdout)
    assert inside["AUTORESEARCH_SEED"] == "7"
    assert not set(PLANTED) & set(inside)
    assert not any(value in result.stdout for value in PLANTED.values())


@needs_bwrap
def test_agent_key_reaches_the_agent_but_never_the_command_line(layout):
    worktree, cache = layout
    key = PLANTED["ANTHROPIC_API_KEY"]
    boxed = sandbox.sandboxed([sys.executable, "-c", "import os; print(os.environ['ANTHROPIC_API_KEY'])"],
                              worktree=worktree, data_cache=cache, mode=AGENT,
                              env={"PATH": os.environ["PATH"], "ANTHROPIC_API_KEY": key})
    assert not any(key in word for word in boxed.argv)          # `ps` shows argv to every user
    result = subprocess.run(boxed.argv, env=boxed.env, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == key


@needs_bwrap
def test_readonly_path_inside_the_worktree_stays_read_only(layout):
    worktree, cache = layout
    (worktree / "prepare").mkdir()
    boxed = sandbox.sandboxed([sys.executable, "-c", _TRY_WRITE + f"""
print(json.dumps([attempt({str(worktree / 'prepare' / 'x.py')!r}), attempt({str(worktree / 'train.py')!r})]))"""],
                              worktree=worktree, data_cache=cache, env=minimal_env(), mode=AGENT,
                              readonly=[worktree / "prepare"])
    result = subprocess.run(boxed.argv, env=boxed.env, capture_output=True, text=True, timeout=60)
    assert json.loads(result.stdout) == ["OSError", "ok"]
    assert not (worktree / "prepare" / "x.py").exists() and (worktree / "train.py").exists()


_BYTECODE = """
import json, sys
from prepare.runtime import setup_environment
setup_environment()
import torch
print(json.dumps({"prefix": sys.pycache_prefix, "dont_write": sys.dont_write_bytecode,
                  "torch_cached": torch.__spec__.cached}))
"""


@needs_bwrap
def test_a_sandboxed_training_reads_the_bytecode_a_trusted_process_wrote(layout):
    """In the sandbox the data cache is read-only: before a trusted process fills its bytecode,
    a training keeps Python's default (no prefix); after warm_bytecode it reads torch's bytecode
    from the cache and writes nothing there."""
    from population.training import warm_bytecode
    from prepare.runtime import torch_bytecode

    worktree, cache = layout
    shutil.copytree(PROJECT / "prepare", worktree / "prepare", ignore=shutil.ignore_patterns("__pycache__"))
    env = {"PYTHONPATH": str(worktree)}
    assert _run_inside(_BYTECODE, worktree, cache, extra=env)["prefix"] is None
    warm_bytecode(cache)
    pyc = Path(torch_bytecode(str(cache / "pycache")))
    assert pyc.is_file()
    before = sorted(p for p in (cache / "pycache").rglob("*") if p.is_file())
    got = _run_inside(_BYTECODE, worktree, cache, extra=env)
    assert got["prefix"] == str(cache / "pycache") and got["dont_write"] is True
    assert Path(got["torch_cached"]) == pyc
    assert sorted(p for p in (cache / "pycache").rglob("*") if p.is_file()) == before
