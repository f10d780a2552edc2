"""Rule guards run after an agent, before the commit: only the train file may change.

`enforce_train_file_only` undoes every other change (tracked edits, deletions, new files) and
reports what it undid, so the worker can record a violation; `tree_fingerprint` hashes a
directory's files as git sees them, uncommitted edits included, to prove `prepare/` untouched.

Every git command here is confined (`gitops.worktree_git`: no hooks, no fsmonitor, the git dir
recorded on the repository's side). `check_worktree_link` tells whether the agent rewrote the
worktree's `.git` link or tampered with its clone (config, hooks); `restore_worktree_link`
undoes it (issue 27).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

from population import gitops

AGENT_SCRATCH = ".agent/"   # the agent's scratch space (description, prompt): never a violation


def changed_paths(worktree: Path, gitdir: Path | None = None) -> list[str]:
    """Every path git sees as changed, staged or new (untracked files one by one), and what git
    ignores (a directory of ignored files as `dir/`): a `sitecustomize.py` or a planted
    `prepare/__pycache__/*.pyc` never reaches a training (it trains an export of the commit), but
    an agent that leaves one broke the rule all the same."""
    output = gitops.worktree_git(worktree, gitdir).status("--porcelain=v1", "-z", "--untracked-files=all",
                                                           "--ignored=matching", "--no-renames",
                                                           "--ignore-submodules=all")
    return sorted({entry[3:] for entry in output.split("\0") if len(entry) > 3})


def enforce_train_file_only(worktree: str | Path, train_file: str, gitdir: Path | None = None) -> list[str]:
    """Revert every change except to `train_file` (and .agent/); return the reverted paths."""
    worktree = Path(worktree)
    runner = gitops.worktree_git(worktree, gitdir)
    made_dir = _train_dir_undone(worktree, train_file, runner)
    violations = [p for p in changed_paths(worktree, gitdir) if p != train_file and not p.startswith(AGENT_SCRATCH)]
    in_head = set(runner.ls_tree("-r", "-z", "--name-only", "HEAD", "--", *violations).split("\0")) \
        if violations else set()
    tracked = [p for p in violations if p in in_head]
    new = [p for p in violations if p not in in_head]
    if tracked:
        runner.checkout("HEAD", "--", *tracked)          # restores index and working file
    if new:
        runner.rm("--cached", "-r", "-q", "-f", "--ignore-unmatch", "--", *new)
        for path in new:
            _remove(worktree, path)
    return sorted(violations + made_dir)


def _train_dir_undone(worktree: Path, train_file: str, runner) -> list[str]:
    """A directory (a nested repository, say) where the train file belongs is a violation git
    status does not list: removed, the train file restored from HEAD; returns [`<train file>/`]."""
    target = worktree / train_file
    if target.is_symlink() or not target.is_dir():
        return []
    shutil.rmtree(target, ignore_errors=True)
    if runner.ls_tree("--name-only", "HEAD", "--", train_file).strip():
        runner.checkout("HEAD", "--", train_file)
    return [train_file + "/"]


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


def tree_fingerprint(worktree: str | Path, directory: str = "prepare", gitdir: Path | None = None) -> str:
    """sha256 over the paths and working contents of the files git tracks or would add under
    `directory` (ignored files such as __pycache__ excluded); any uncommitted edit changes it."""
    worktree = Path(worktree)
    listing = gitops.worktree_git(worktree, gitdir).ls_files("-z", "--cached", "--others", "--exclude-standard",
                                                             "--", directory)
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


# ---------------------------------------------------------------- the worktree's link and its clone (issue 27)

# What a clone made by `gitops.init_clone` may hold, when this process has no snapshot of it.
_CLONE_CONFIG_KEYS = frozenset({"core.repositoryformatversion", "core.filemode", "core.bare", "core.logallrefupdates",
                                "core.ignorecase", "core.precomposeunicode", "core.symlinks", "user.name",
                                "user.email", "gc.auto", "commit.gpgsign"})


def check_worktree_link(worktree: str | Path, expected_gitdir: str | Path) -> str | None:
    """Why the worktree or its clone can no longer be trusted (one line naming the rule), or None.

    `expected_gitdir` is the git dir computed on the trusted side (`gitops.worktree_gitdir(clone,
    worktree)`). Checks that the worktree's `.git` is a regular file naming exactly that git dir,
    that the git dir still points back and has no config of its own, that the clone's config is
    what `init_clone` wrote (no core.hooksPath, fsmonitor, include, alias, filter...), and that
    no hook was planted in the clone. Meant for a worker's clone, whose hooks/ has samples only."""
    worktree, expected = Path(worktree), Path(os.path.realpath(expected_gitdir))
    link = worktree / ".git"
    try:
        mode = os.lstat(link).st_mode
    except FileNotFoundError:
        return "the agent rewrote the worktree's .git link (it is gone)"
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a symlink" if stat.S_ISLNK(mode) else "not a file"
        return f"the agent rewrote the worktree's .git link (it is {kind})"
    with open(link, "rb") as handle:
        text = handle.read(4097).decode("utf-8", "replace")
    target = text[len("gitdir:"):].strip() if text.startswith("gitdir:") and len(text) <= 4096 else ""
    resolved = Path(os.path.realpath(target if os.path.isabs(target) else worktree / target)) if target else None
    if resolved != expected:
        return f"the agent rewrote the worktree's .git link (it names {target[:200] or 'no git dir'}, not {expected})"
    try:
        back = Path((expected / "gitdir").read_text().strip())
        common = Path((expected / "commondir").read_text().strip())
    except OSError:
        return f"the worktree's git dir {expected} is no longer a worktree's (gitdir or commondir missing)"
    back = back if back.is_absolute() else expected / back
    if back.name != ".git" or Path(os.path.realpath(back.parent)) != Path(os.path.realpath(worktree)):
        return f"the worktree's git dir {expected} no longer points back at the worktree"
    if (expected / "config.worktree").exists():
        return "the worktree's git dir has a config of its own (config.worktree)"
    common = Path(os.path.realpath(common if common.is_absolute() else expected / common))
    return check_clone_config(common) or _planted_hooks(common)


def check_clone_config(common_dir: str | Path) -> str | None:
    """Why the clone's config differs from what `init_clone` wrote (or, without this process's
    snapshot, holds a key init_clone never writes), or None."""
    common_dir = Path(common_dir)
    entries = gitops.config_entries(common_dir / "config")
    snapshot = gitops.clone_config_snapshot(common_dir)
    if snapshot is not None:
        known = set(snapshot[1])
        changed = [f"{k}={v}" for k, v in entries if (k, v) not in known]
    else:
        changed = [f"{k}={v}" for k, v in entries if k.lower() not in _CLONE_CONFIG_KEYS]
    if changed:
        shown = ", ".join(c[:120] for c in changed[:4]) + (" ..." if len(changed) > 4 else "")
        return f"the clone's git config was changed by someone other than init_clone: {shown}"
    return None


def _planted_hooks(common_dir: Path) -> str | None:
    hooks = sorted(p.name for p in (common_dir / "hooks").iterdir() if not p.name.endswith(".sample")) \
        if (common_dir / "hooks").is_dir() else []
    return f"git hooks were planted in the clone: {', '.join(hooks[:6])}" if hooks else None


def restore_worktree_link(worktree: str | Path, expected_gitdir: str | Path) -> None:
    """Undo what `check_worktree_link` finds: the `.git` link rewritten to name `expected_gitdir`
    (whatever stood there removed, never followed), the git dir's config.worktree dropped, the
    clone's config put back as `init_clone` wrote it (when this process holds the snapshot), and
    planted hooks removed. The agent's own git dir elsewhere in the worktree is left to the
    worktree's cleanup (with the link restored, nothing reads it)."""
    worktree, expected = Path(worktree), Path(os.path.realpath(expected_gitdir))
    link = worktree / ".git"
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    elif os.path.lexists(link):
        link.unlink()
    link.write_text(f"gitdir: {expected}\n")
    (expected / "config.worktree").unlink(missing_ok=True)
    try:
        common = Path((expected / "commondir").read_text().strip())
    except OSError:
        return
    common = Path(os.path.realpath(common if common.is_absolute() else expected / common))
    snapshot = gitops.clone_config_snapshot(common)
    if snapshot is not None and (common / "config").read_bytes() != snapshot[0]:
        (common / "config").write_bytes(snapshot[0])
    hooks = common / "hooks"
    for hook in sorted(hooks.iterdir()) if hooks.is_dir() else []:
        if not hook.name.endswith(".sample"):
            _remove_any(hook)


def _remove_any(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
