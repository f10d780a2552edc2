"""What every agent shares: the Proposal it returns, the description protocol, and running an
agent process under a wall-clock limit with its output captured and bounded (in bubblewrap with
`--sandbox`)."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from population import sandbox
from population.agents.env import scrub, secret_values
from population.processes import stop_group

AGENT_DIR = ".agent"                     # scratch space in the worktree, never committed
DESCRIPTION_FILE = f"{AGENT_DIR}/description"
DESCRIPTION_PREFIX = "DESCRIPTION:"
MAX_TRANSCRIPT_CHARS = 200_000
AGENT_OUTPUT_FILES = ("agent.out", "agent.err")
MAX_DESCRIPTION_CHARS = 200
NO_DESCRIPTION = "(the agent wrote no description)"


class AgentSpecError(ValueError):
    """A bad agent spec or a missing agent program; its message is one line for the user."""


@dataclass
class Proposal:
    description: str
    transcript: str
    seconds: float
    tokens: int | None = None
    cost_usd: float | None = None
    error: str | None = None


class Agent:
    """Edits the task's train file in a worktree; never commits. Subclasses implement `_propose`.

    `use_sandbox` (set by the worker under `--sandbox`): run the agent's program in bubblewrap,
    the worktree its only writable place besides a private /tmp and HOME, its model's endpoint
    its only network. Only subprocess agents
    (claude, codex, command:) act on it; the built-in `openai:` and `mutate` agents run no
    external program (our own code applies their edits), so they have nothing to confine."""

    spec: str = ""
    use_sandbox: bool = False
    output_dir: Path | None = None     # set by the worker: a subprocess agent's output goes there (its watchdog)

    def __init__(self, *, max_transcript_chars: int = MAX_TRANSCRIPT_CHARS, api_key: str | None = None):
        self.max_transcript_chars = max_transcript_chars
        self._extra_secrets = [api_key] if api_key else []

    def propose(self, worktree: Path, prompt: str, *, timeout: float) -> Proposal:
        worktree = Path(worktree)
        clear_agent_dir(worktree)
        head_before = git_head(worktree)
        start = time.monotonic()
        try:
            proposal = self._propose(worktree, prompt, timeout=timeout)
        except Exception as exc:  # an agent's failure is a result to record, not a driver crash
            proposal = Proposal("", "", 0.0, error=f"{type(exc).__name__}: {exc}")
        finally:
            file_description = read_description_file(worktree)
            clear_agent_dir(worktree)
            unlocked = remove_git_locks(worktree) if head_before is not None else []
            undone = undo_agent_commits(worktree, head_before)
        if unlocked:
            proposal.transcript += f"\n[driver] the agent left git lock files, removed: {', '.join(unlocked)}\n"
        if undone:
            proposal.transcript += f"\n[driver] the agent committed: {undone}\n"
        proposal.seconds = proposal.seconds or time.monotonic() - start
        proposal.description = clean_description(file_description or proposal.description) or NO_DESCRIPTION
        secrets = secret_values(extra=self._extra_secrets)
        proposal.transcript = bound_text(scrub(proposal.transcript, secrets), self.max_transcript_chars)
        proposal.description = scrub(proposal.description, secrets)
        if proposal.error:
            proposal.error = scrub(proposal.error, secrets)
        return proposal

    def _propose(self, worktree: Path, prompt: str, *, timeout: float) -> Proposal:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec}>"


# ---------------------------------------------------------------- the description protocol

def clear_agent_dir(worktree: Path) -> None:
    shutil.rmtree(worktree / AGENT_DIR, ignore_errors=True)


def read_description_file(worktree: Path) -> str:
    path = worktree / DESCRIPTION_FILE
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


def description_from_text(text: str) -> str:
    """The last `DESCRIPTION: ...` line of an answer, or ''."""
    for line in reversed(text.splitlines()):
        stripped = line.strip().strip("*`").strip()
        if stripped.upper().startswith(DESCRIPTION_PREFIX):
            return stripped[len(DESCRIPTION_PREFIX):].strip()
    return ""


def clean_description(text: str) -> str:
    """One line, tabs and newlines flattened (results.tsv is tab-separated), bounded."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    first = " ".join(first.split())
    return first[:MAX_DESCRIPTION_CHARS]


def bound_text(text: str, max_chars: int) -> str:
    """Keep the head and the tail of an over-long text (the end usually says how it went)."""
    if len(text) <= max_chars:
        return text
    half = max_chars // 2
    dropped = len(text) - 2 * half
    return f"{text[:half]}\n[... {dropped} characters cut ...]\n{text[-half:]}"


def git_head(worktree: Path) -> str | None:
    """HEAD of the repository whose top level is `worktree` (None for anything else, so that we
    never touch an enclosing repository)."""
    result = subprocess.run(["git", "-C", str(worktree), "rev-parse", "--show-toplevel", "HEAD"],
                            capture_output=True, text=True)
    lines = result.stdout.split()
    if result.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != worktree.resolve():
        return None
    return lines[1]


def git_dirs(worktree: Path) -> list[Path]:
    """The worktree's own git directory and the common one of its repository (one path when they
    are the same; none outside a repository)."""
    result = subprocess.run(["git", "-C", str(worktree), "rev-parse", "--absolute-git-dir", "--git-common-dir"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        return []
    git_dir, common = result.stdout.split("\n")[:2]
    return list(dict.fromkeys([Path(git_dir), (worktree / common).resolve()]))


def remove_git_locks(worktree: Path) -> list[str]:
    """Delete the git lock files an agent left behind (killed mid-commit, or on purpose), so the
    worker's own git commands after it do not fail. Safe because the agent's process group is
    gone by now and nothing else uses the worker's clone while its agent runs. Returns the
    removed paths, relative to the git directories."""
    dirs = git_dirs(worktree)
    if not dirs:
        return []
    git_dir, common_dir = dirs[0], dirs[-1]
    locks = {*git_dir.glob("*.lock"), *common_dir.glob("*.lock"), *(common_dir / "refs").rglob("*.lock")}
    removed = []
    for lock in sorted(locks):
        lock.unlink(missing_ok=True)
        base = git_dir if lock.is_relative_to(git_dir) else common_dir
        removed.append(str(lock.relative_to(base)))
    return removed


def undo_agent_commits(worktree: Path, head_before: str | None) -> str:
    """Agents must not commit or stage. Put HEAD and the index back where they were (a mixed
    reset), leaving every change in the working files, where the guard sees and judges it."""
    if head_before is None:
        return ""
    moved = git_head(worktree) != head_before
    subprocess.run(["git", "-C", str(worktree), "reset", "-q", head_before], capture_output=True)
    return f"its commits were undone (HEAD back at {head_before[:12]}, changes kept)" if moved else ""


# ---------------------------------------------------------------- running an agent process

@dataclass
class ProcessResult:
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool

    def transcript(self) -> str:
        if not self.stderr.strip():
            return self.stdout
        return f"{self.stdout}\n--- stderr ---\n{self.stderr}"


def run_agent_process(argv: list[str], *, cwd: Path, env: dict[str, str], stdin_text: str | None,
                      timeout: float, max_chars: int = MAX_TRANSCRIPT_CHARS,
                      use_sandbox: bool = False, output_dir: Path | None = None) -> ProcessResult:
    """Run `argv` in its own process group; at `timeout` kill the whole group (agents spawn
    shells and tools). Output goes to temporary files so a chatty agent cannot exhaust memory.
    With `use_sandbox`, in bubblewrap: `cwd` (the worktree) writable, its git directories
    read-only (visible even when they live in /tmp; agents never commit), of the rest of the
    host only what the program needs to run (population/sandbox.py), read-only, and no network
    but the model endpoint(s) its environment names, through an egress proxy
    (population/egress.py). With `output_dir`, its stdout and stderr are the files `agent.out` and
    `agent.err` there (their times tell the worker's watchdog when it last wrote). Raises
    SandboxUnavailable."""
    if use_sandbox:
        boxed = sandbox.sandboxed(argv, worktree=cwd, env=env, mode=sandbox.AGENT, readonly=git_dirs(Path(cwd)))
        argv, env = boxed.argv, boxed.env
    start = time.monotonic()
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
    output = (lambda name: open(Path(output_dir) / name, "w+b")) if output_dir is not None else \
        (lambda name: tempfile.TemporaryFile())
    with output(AGENT_OUTPUT_FILES[0]) as out, output(AGENT_OUTPUT_FILES[1]) as err, tempfile.TemporaryFile() as stdin:
        stdin.write((stdin_text or "").encode())
        stdin.seek(0)
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=stdin, stdout=out, stderr=err,
                                start_new_session=True)
        timed_out = False
        try:
            proc.wait(timeout=max(timeout, 0.001))
        except subprocess.TimeoutExpired:
            timed_out = True
            stop_group(proc)
        else:
            stop_group(proc, grace_s=0)   # leftover children of a finished agent
        seconds = time.monotonic() - start
        result = ProcessResult(proc.returncode, _read_bounded(out, max_chars), _read_bounded(err, max_chars),
                               seconds, timed_out)
    if output_dir is not None:          # raw output may hold the agent's own key: only the scrubbed transcript stays
        for name in AGENT_OUTPUT_FILES:
            (Path(output_dir) / name).unlink(missing_ok=True)
    return result


def _read_bounded(handle, max_chars: int) -> str:
    size = handle.seek(0, os.SEEK_END)
    half = max_chars // 2
    if size <= max_chars:
        handle.seek(0)
        return handle.read().decode(errors="replace")
    handle.seek(0)
    head = handle.read(half).decode(errors="replace")
    handle.seek(size - half)
    tail = handle.read().decode(errors="replace")
    return f"{head}\n[... {size - 2 * half} bytes cut ...]\n{tail}"
