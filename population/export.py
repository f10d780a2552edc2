"""Train what was committed, nothing else: a fresh export of a commit's tree for each training.

A training never runs in the agent's worktree, where ignored files (a `sitecustomize.pyc`, a stale
`prepare/__pycache__`), a rewritten `.git` link or symlinks out would change what runs while the
commit shows something else. The worker exports the commit with `git archive` (from its own
clone's git directory, hooks and config-driven commands off) into a directory of its own and
trains there; the train file must be a regular file in the commit.
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

REGULAR_MODES = ("100644", "100755")
_SAFE_GIT = ["-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "core.attributesFile=/dev/null"]


class ExportError(RuntimeError):
    """The commit cannot be trained as it is; the message names the rule."""


def _git(git_dir: Path, *args: str) -> bytes:
    env = {"PATH": os.environ.get("PATH", os.defpath), "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
           "HOME": "/nonexistent", "GIT_TERMINAL_PROMPT": "0"}
    out = subprocess.run(["git", *_SAFE_GIT, "--git-dir", str(git_dir), *args], capture_output=True, env=env)
    if out.returncode != 0:
        raise ExportError(f"git {args[0]} failed: {out.stderr.decode(errors='replace').strip()[:300]}")
    return out.stdout


def check_train_file(git_dir: Path, commit: str, train_file: str) -> None:
    """The train file must be a regular file of the commit (no symlink, no submodule)."""
    listing = _git(git_dir, "ls-tree", commit, "--", train_file).decode().split()
    if not listing:
        raise ExportError(f"train-file rule: {train_file} is not in commit {commit[:12]}")
    if listing[0] not in REGULAR_MODES:
        raise ExportError(f"train-file rule: {train_file} must be a regular file, the commit has mode {listing[0]} "
                          "(a symlink or a submodule)")


def export_commit(git_dir: str | os.PathLike, commit: str, dest: str | os.PathLike, train_file: str) -> Path:
    """`commit`'s tree, exactly, in a new directory `dest` (replaced if it exists). Symlinks that
    point out of the tree or absolute paths are refused by tarfile's `data` filter."""
    git_dir, dest = Path(git_dir), Path(dest)
    check_train_file(git_dir, commit, train_file)
    archive = _git(git_dir, "archive", "--format=tar", commit)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        try:
            tar.extractall(dest, filter="data")
        except tarfile.FilterError as exc:
            raise ExportError(f"export rule: {exc}") from None
    return dest


def directory_fingerprint(root: str | os.PathLike, directory: str = "prepare") -> str:
    """The same sha256 as guards.tree_fingerprint, over the files on disk under root/directory
    (an export has no .git and no ignored files, so on disk is what was committed)."""
    from population.guards import _content_digest

    root = Path(root)
    digest = hashlib.sha256()
    paths = sorted(p for p in (root / directory).rglob("*") if p.is_file() or p.is_symlink())
    for path in paths:
        rel = path.relative_to(root).as_posix()
        digest.update(rel.encode() + b"\0" + _content_digest(path) + b"\0")
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes ('missing' when it is gone)."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return "missing"
