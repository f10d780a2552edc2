"""--sandbox confines subprocess agents (command:, claude, codex) in bubblewrap: the worktree is
theirs to edit, everything else read-only, HOME private, their own key still in their environment;
wall-clock limits and transcripts keep working. Real bubblewrap, a fake `command:` agent."""
from __future__ import annotations

import hashlib
import os
import pwd
import shlex
import shutil
import sys
import time
import uuid
from pathlib import Path

import pytest

from population import gitops, guards, sandbox
from population.agents import make_agent
from population.worker import PrepareJob, WorkerCore
from test_driver_support import make_seed_repo
from test_egress import no_proxy_left_behind, serve_http   # noqa: F401  (autouse: agents' proxies closed)

needs_bwrap = pytest.mark.skipif(not sandbox.available(), reason=f"bubblewrap cannot run here: {sandbox.probe()}")

PLANTED_FOO = "foo-PLANTED-token-0123456789"
PLANTED_OPENAI = "sk-PLANTED-openai-0123456789"
SLEEPER = "97.531"        # a sleep nobody else runs: how the test finds the agent's leftover child

# `agent edit TRAIN_FILE TARGET...`: edit the train file, try to write each target, write to
# $HOME, report what it saw. `agent hang`: start a sleeper and wait forever.
FAKE_AGENT = f"""#!/bin/sh
if [ "$1" = hang ]; then
    sleep {SLEEPER} &
    wait
fi
shift
printf '\\n# tuned inside the sandbox\\n' >> "$1"
shift
for target in "$@"; do
    if (echo escaped > "$target") 2>/dev/null; then echo "wrote $target"; else echo "refused $target"; fi
done
echo "inside home" > "$HOME/state" && echo "home=$HOME $(cat "$HOME/state")"
echo "key_sha=$(printf %s "$FOO_TOKEN" | sha256sum | cut -c1-16)"
echo "names=$(env | cut -d= -f1 | sort | tr '\\n' ' ')"
echo "git: $(git status --short 2>&1 | tr '\\n' ' ')"
if git -c user.name=a -c user.email=a@a commit -qam sneaky >/dev/null 2>&1
then echo commit=made; else echo commit=refused; fi
mkdir -p .agent && echo "sandboxed edit" > .agent/description
"""


def key_sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:16]


def line(transcript: str, prefix: str) -> str | None:
    """What the agent reported after `prefix` (None when it never got that far)."""
    return next((text[len(prefix):] for text in transcript.splitlines() if text.startswith(prefix)), None)


@pytest.fixture
def outside() -> Path:
    """A directory outside /tmp (the sandbox's /tmp is private, so a write to a host /tmp path
    would only land there): the real HOME's cache, like test_wiring does."""
    root = Path(pwd.getpwuid(os.getuid()).pw_dir) / ".cache" / f"autoresearch-sandbox-agents-{uuid.uuid4().hex[:8]}"
    if str(root).startswith(sandbox.SANDBOX_TMP + "/"):
        pytest.skip(f"the user's home is in {sandbox.SANDBOX_TMP}: no writable directory outside it for the test")
    try:
        root.mkdir(parents=True)
    except OSError as error:
        pytest.skip(f"no writable directory outside /tmp for the test: {error}")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def agent_script(tmp_path) -> Path:
    """The fake agent lives in the host's /tmp: the sandbox must re-expose the program itself."""
    path = tmp_path / "bin" / "fake-agent"
    path.parent.mkdir()
    path.write_text(FAKE_AGENT)
    path.chmod(0o755)
    return path


@pytest.fixture
def host_home(outside, monkeypatch) -> Path:
    home = outside / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("FOO_TOKEN", PLANTED_FOO)
    monkeypatch.setenv("OPENAI_API_KEY", PLANTED_OPENAI)
    return home


@pytest.fixture
def worktree(tmp_path) -> Path:
    return make_seed_repo(tmp_path / "driver-repo" / "wt")


def sandboxed_agent(spec: str, **options):
    agent = make_agent(spec, **options)
    agent.use_sandbox = True
    return agent


# ---------------------------------------------------------------- the agent's sandbox, pure

def test_agent_argv_makes_a_private_home_and_binds_no_data_cache_it_was_not_given(tmp_path):
    argv = sandbox.bwrap_argv(["claude"], worktree=tmp_path, data_cache=None, mode=sandbox.AGENT)
    assert argv.index("--tmpfs") < argv.index("--dir") and argv[argv.index("--dir") + 1] == sandbox.AGENT_HOME
    bound = [argv[i + 1] for i, word in enumerate(argv) if word in ("--ro-bind", "--bind")]
    assert [path for path in bound if path.startswith(str(tmp_path))] == [str(tmp_path)]     # the worktree only
    training = sandbox.bwrap_argv(["python"], worktree=tmp_path, data_cache=tmp_path / "cache")
    assert "--dir" not in training and (str(tmp_path / "cache"),) * 2 in zip(training[1:], training[2:])


def test_agent_env_keeps_the_key_and_moves_home_and_temp_into_the_sandbox():
    env = sandbox.agent_env({"PATH": "/usr/bin", "HOME": "/home/u", "ANTHROPIC_API_KEY": PLANTED_FOO})
    assert env == {"PATH": "/usr/bin", "HOME": sandbox.AGENT_HOME, "TMPDIR": "/tmp", "ANTHROPIC_API_KEY": PLANTED_FOO}


def test_a_program_anywhere_is_re_exposed_with_what_it_needs_to_start(tmp_path):
    """A program outside the system directories (here in /tmp, which the private /tmp hides):
    the file itself, where its symlink leads, the interpreter its #! line names, and the package
    directory of a script that npm installed."""
    package = tmp_path / "lib" / "node_modules" / "@scope" / "agent"
    (package / "vendor").mkdir(parents=True)
    (tmp_path / "bin").mkdir()
    interpreter = tmp_path / "bin" / "runtime"
    interpreter.write_text("")
    (package / "cli.js").write_text("#!/usr/bin/env runtime --flag\n")
    for program in (interpreter, package / "cli.js"):
        program.chmod(0o755)
    (tmp_path / "bin" / "agent").symlink_to(package / "cli.js")
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin"}
    assert set(sandbox.program_paths(["agent", "-p"], env)) == {
        str(tmp_path / "bin" / "agent"), str(package / "cli.js"), str(package), str(interpreter)}
    assert set(sandbox.program_paths(["/usr/bin/env"], env)) == {"/usr/bin/env"}   # in the system: left out later
    assert sandbox.program_paths(["no-such-program"], env) == []


def test_a_python_in_a_virtual_environment_brings_its_installation(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text(f"home = {tmp_path / 'base' / 'bin'}\ninclude-system-site-packages = true\n")
    (venv / "bin" / "python3").write_text("")
    assert set(sandbox.program_paths([str(venv / "bin" / "python3")], {})) == {
        str(venv / "bin" / "python3"), str(venv), str(tmp_path / "base")}


def test_runtime_paths_never_show_a_directory_that_holds_more_than_an_installation(tmp_path, monkeypatch):
    checkout = tmp_path / "checkout"
    (checkout / ".git").mkdir(parents=True)
    experiments = tmp_path / "experiments"
    installed = tmp_path / "opt" / "site-packages"
    installed.mkdir(parents=True)
    (experiments / "1").mkdir(parents=True)
    monkeypatch.setattr(sandbox.sys, "path", [str(checkout), str(experiments), str(installed), str(tmp_path / "gone"),
                                              os.path.expanduser("~"), "/usr/lib/python3"])
    paths = sandbox.runtime_paths(["true"], {}, keep_out=[experiments / "1"])
    assert str(installed) in paths
    assert not {str(checkout), str(experiments), str(tmp_path / "gone"), os.path.expanduser("~")} & set(paths)
    assert not any(path.startswith("/usr/") for path in paths)                        # bound as the system


@needs_bwrap
def test_agents_get_no_gpu_trainings_do(tmp_path, monkeypatch):
    monkeypatch.setattr(sandbox, "gpu_device_nodes", lambda: ["/dev/null"])
    agent = sandbox.sandboxed(["claude"], worktree=tmp_path, env={}, mode=sandbox.AGENT)
    training = sandbox.sandboxed(["python"], worktree=tmp_path, env={}, data_cache=tmp_path)
    assert "--dev-bind" not in agent.argv and "--dev-bind" in training.argv
    with pytest.raises(ValueError, match="data cache"):
        sandbox.sandboxed(["python"], worktree=tmp_path, env={})


# ---------------------------------------------------------------- real sandboxes

@needs_bwrap
def test_agent_edits_its_worktree_and_nothing_outside(host_home, outside, worktree, agent_script, tmp_path):
    targets = {"outside": outside / "escape.txt", "test_tmp": tmp_path / "escape.txt",
               "parent": worktree.parent / "escape.txt"}
    agent = sandboxed_agent(f"command:{agent_script} edit engine/train.py " + " ".join(map(str, targets.values())),
                            key_env="FOO_TOKEN")
    proposal = agent.propose(worktree, "make it better", timeout=30)
    assert proposal.error is None, proposal.transcript
    assert "# tuned inside the sandbox" in (worktree / "engine" / "train.py").read_text()
    assert proposal.description == "sandboxed edit"
    # outside /tmp the filesystem is read-only: the write itself fails
    assert f"refused {targets['outside']}" in proposal.transcript
    # no write reaches the host, wherever it was aimed (a /tmp path at most lands in the private /tmp)
    assert not any(path.exists() for path in targets.values())
    # its HOME is private and writable; the host's HOME is untouched
    assert line(proposal.transcript, "home=") == f"{sandbox.AGENT_HOME} inside home"
    assert list(host_home.iterdir()) == []
    # its own key reached it, through the environment, and nothing else secret did
    assert line(proposal.transcript, "key_sha=") == key_sha(PLANTED_FOO)
    names = set(line(proposal.transcript, "names=").split())
    assert "FOO_TOKEN" in names and "OPENAI_API_KEY" not in names
    assert names <= {"PATH", "HOME", "LANG", "TERM", "TMPDIR", "FOO_TOKEN", "PWD", "OLDPWD", "SHLVL", "_",
                     "PYTHONDONTWRITEBYTECODE", *sandbox.egress.proxy_env()}


def test_without_the_sandbox_the_same_agent_does_write_outside(host_home, outside, worktree, agent_script):
    """The control: what the test above sees refused is really attempted."""
    target = outside / "escape.txt"
    agent = make_agent(f"command:{agent_script} edit engine/train.py {target}", key_env="FOO_TOKEN")
    proposal = agent.propose(worktree, "make it better", timeout=30)
    assert proposal.error is None and target.read_text() == "escaped\n"
    assert line(proposal.transcript, "commit=") == "made"        # (undone by the agent's caller)
    assert (host_home / "state").exists()


@needs_bwrap
def test_a_sandboxed_agent_is_killed_at_its_time_limit_with_its_children(host_home, worktree, agent_script):
    agent = sandboxed_agent(f"command:{agent_script} hang")
    start = time.monotonic()
    proposal = agent.propose(worktree, "hang", timeout=2)
    assert proposal.error == "agent timed out after 2 s"
    assert time.monotonic() - start < 15
    assert not sleepers_alive()


def sleepers_alive(seconds: str = SLEEPER) -> list[int]:
    """Live processes running `sleep <seconds>` (host pids; zombies do not count)."""
    alive = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if cmdline[:2] == [b"sleep", seconds.encode()] and state != "Z":
            alive.append(int(entry.name))
    return alive


@needs_bwrap
def test_a_sandboxed_worker_confines_its_agent_and_still_commits_the_child(host_home, outside, agent_script,
                                                                          tmp_path):
    seed = make_seed_repo(outside / "seed")          # the driver's repository, outside /tmp
    repo = gitops.open_run_repo(seed)
    escape = seed / "escape.txt"
    core = WorkerCore("w0", "t", f"command:{agent_script} edit engine/train.py {escape}", {"key_env": "FOO_TOKEN"},
                      workdir=str(tmp_path / "workers"), use_sandbox=True)
    data, ref = gitops.bundle_bytes(repo, gitops.head_commit(repo))
    job = PrepareJob(exp_id=1, commit=gitops.head_commit(repo), bundle_ref=ref,
                     prepare_fingerprint=guards.tree_fingerprint(seed, "prepare"), train_file="engine/train.py",
                     prompt="make it better", branch="population/t/m0001", member="m0001", agent_timeout_s=30)
    result = core.prepare(job, [data])
    assert result.status == "ready", result.reason
    assert f"refused {escape}" in result.transcript and not escape.exists()
    assert line(result.transcript, "home=") == f"{sandbox.AGENT_HOME} inside home"
    assert line(result.transcript, "key_sha=") == key_sha(PLANTED_FOO)
    # the worker's clone lives in /tmp: its git directory is re-exposed (read-only) to the agent
    assert line(result.transcript, "git: ").split()[:2] == ["M", "engine/train.py"]
    assert line(result.transcript, "commit=") == "refused"      # read-only, as agents never commit
    assert "+# tuned inside the sandbox" in gitops.diff(repo, job.commit, gitops.fetch_bundle(
        repo, result.bundle, result.bundle_ref, "refs/heads/population/t/m0001"))


_NET_AGENT = """
import os, urllib.error, urllib.request
def get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.read().decode()
    except urllib.error.HTTPError as error:
        return f"refused {error.code}"
print("model:", get(os.environ["ANTHROPIC_BASE_URL"] + "/v1/messages"))
print("ray:", get("http://127.0.0.1:%d/"))
os.makedirs(".agent", exist_ok=True)
open(".agent/description", "w").write("asked the model")
"""


@needs_bwrap
def test_a_sandboxed_agent_talks_to_its_model_and_to_nothing_else(host_home, worktree, monkeypatch):
    """Its base URL (passed on with key_env) is its allowlist: the model answers, Ray's port does not."""
    with serve_http(b"make it better") as (model, _), serve_http(b"ray's secrets") as (ray, ray_seen):
        monkeypatch.setenv("ANTHROPIC_BASE_URL", f"http://127.0.0.1:{model}")
        agent = sandboxed_agent(f"command:{sys.executable} -c {shlex.quote(_NET_AGENT % ray)}",
                                key_env="ANTHROPIC_BASE_URL")
        proposal = agent.propose(worktree, "make it better", timeout=30)
    assert proposal.error is None, proposal.transcript
    assert line(proposal.transcript, "model: ") == "make it better"
    assert line(proposal.transcript, "ray: ") == "refused 403" and ray_seen == []
    assert proposal.description == "asked the model"
