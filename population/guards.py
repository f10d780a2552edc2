"""Rule guards run after an agent, before the commit: only the train file may change.

`enforce_train_file_only` undoes every other change (tracked edits, deletions, new files) and
reports what it undid, so the worker can record a violation; `tree_fingerprint` hashes a
directory's files as git sees them, uncommitted edits included, to prove `prepare/` untouched.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import git

AGENT_SCRATCH = ".agent/"   # the agent's scratch space (description, prompt): never a violation


def changed_paths(worktree: Path) -> list[str]:
    """Every path git sees as changed, staged or new (untracked files one by one)."""
    output = git.Repo(worktree).git.status("--porcelain=v1", "-z", "--untracked-files=all", "--no-renames")
    return sorted({entry[3:] for entry in output.split("\0") if len(entry) > 3})


def enforce_train_file_only(worktree: str | Path, train_file: str) -> list[str]:
    """Revert every change except to `train_file` (and .agent/); return the reverted paths."""
    worktree = Path(worktree)
    repo = git.Repo(worktree)
    violations = [p for p in changed_paths(worktree) if p != train_file and not p.startswith(AGENT_SCRATCH)]
    in_head = set(repo.git.ls_tree("-r", "-z", "--name-only", "HEAD", "--", *violations).split("\0")) \
        if violations else set()
    tracked = [p for p in violations if p in in_head]
    new = [p for p in violations if p not in in_head]
    if tracked:
        repo.git.checkout("HEAD", "--", *tracked)          # restores index and working file
    if new:
        repo.git.rm("--cached", "-r", "-q", "-f", "--ignore-unmatch", "--", *new)
        for path in new:
            _remove(worktree, path)
    return violations


def _remove(worktree: Path, path: str) -> None:
    target = worktree / path
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target, ignore_errors=True)
    else:
        target.unlink(missing_ok=True)
    # Drop directories the agent created and that are empty now.
    parent = target.parent
    while parent != worktree and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


def tree_fingerprint(worktree: str | Path, directory: str = "prepare") -> str:
    """sha256 over the paths and working contents of the files git tracks or would add under
    `directory` (ignored files such as __pycache__ excluded); any uncommitted edit changes it."""
    worktree = Path(worktree)
    listing = git.Repo(worktree).git.ls_files("-z", "--cached", "--others", "--exclude-standard", "--", directory)
    digest = hashlib.sha256()
    for path in sorted({p for p in listing.split("\0") if p}):
        digest.update(path.encode() + b"\0" + _content_digest(worktree / path) + b"\0")
    return digest.hexdigest()


def _content_digest(path: Path) -> bytes:
    if path.is_symlink():
        return b"link:" + os.readlink(path).encode()
    try:
        mode = b"x" if os.access(path, os.X_OK) else b"-"
        return mode + hashlib.sha256(path.read_bytes()).digest()
    except (FileNotFoundError, IsADirectoryError):
        return b"missing"
