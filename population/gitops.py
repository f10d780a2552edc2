"""Git for the population: the run repository's refs and worktrees, workers' clones, and bundles.

Nothing here assumes a shared filesystem: a commit travels between the driver's repository and a
worker's clone as the bytes of a `git bundle`, so one node and many take the same path.

Refs in the run repository (the repo the user runs in):
    population/<tag>/<member>   one branch per member (kept after a cull: the lineage is never lost)
    population/<tag>/best       the champion, moved on promotion
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import git

GIT_USER = ("autoresearch-population", "population@localhost")
_TMP_REF_PREFIX = "refs/population-tmp"


class GitOpsError(Exception):
    """A git problem the user must fix; the message is one line."""


# ---------------------------------------------------------------- names

def member_branch(tag: str, member: str) -> str:
    return f"population/{tag}/{member}"


def best_branch(tag: str) -> str:
    return f"population/{tag}/best"


def member_name(number: int) -> str:
    return f"m{number:04d}"


def commit_message(description: str, *, exp_id: int, parent_commit: str, member: str, agent: str) -> str:
    """The agent's description as the subject; the experiment's identity in trailers."""
    subject = " ".join((description or "").split()) or "(no description)"
    return (f"{subject}\n\nExperiment-Id: {exp_id}\nMember: {member}\n"
            f"Parent: {parent_commit}\nAgent: {agent}\n")


# ---------------------------------------------------------------- the run repository

def open_run_repo(path: str | os.PathLike | None) -> git.Repo:
    """The git repository at `path` (or around the current directory), opened at its root."""
    start = Path(path or os.getcwd())
    try:
        repo = git.Repo(start, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise GitOpsError(f"{start} is not inside a git repository; run in the project repo or pass --repo") from None
    if repo.bare:
        raise GitOpsError(f"{repo.git_dir} is a bare repository; --repo needs a checkout")
    return git.Repo(repo.working_tree_dir)


def head_commit(repo: git.Repo) -> str:
    try:
        return repo.head.commit.hexsha
    except ValueError:
        raise GitOpsError(f"{repo.working_tree_dir} has no commit yet; commit the seed first") from None


def dirty_paths(repo: git.Repo, paths: list[str]) -> list[str]:
    """Paths under `paths` that differ from HEAD (modified, staged or untracked, not ignored)."""
    out = repo.git.status("--porcelain", "--untracked-files=all", "--", *paths)
    return [line[3:] for line in out.splitlines() if line.strip()]


def check_seed(repo: git.Repo, train_file: str, fixed_dirs: tuple[str, ...] = ("prepare",)) -> str:
    """The seed commit (HEAD), after checking that the train file and the fixed directories are
    committed and clean, so that every member starts from exactly what the user sees."""
    commit = head_commit(repo)
    try:
        repo.git.cat_file("-e", f"{commit}:{train_file}")
    except git.GitCommandError:
        raise GitOpsError(f"the seed commit {commit[:9]} has no {train_file}; commit it first") from None
    dirty = dirty_paths(repo, [train_file, *fixed_dirs])
    if dirty:
        shown = ", ".join(dirty[:5]) + (" ..." if len(dirty) > 5 else "")
        raise GitOpsError(f"uncommitted changes in the seed ({shown}); commit or stash them first")
    return commit


def set_ref(repo: git.Repo, branch: str, commit: str) -> None:
    repo.git.update_ref(f"refs/heads/{branch}", commit)


def clear_run_ref_locks(repo: git.Repo, tag: str) -> list[str]:
    """Delete the `.lock` files of the run's own refs (refs/heads/population/<tag>/...), left by a
    driver killed inside `git update-ref`. Only the driver holding the run's lock writes these
    refs, so any lock there is stale; the user's other locks (index.lock...) are left alone.
    Returns the removed ref names."""
    common = Path(repo.git.rev_parse("--git-common-dir"))
    common = common if common.is_absolute() else Path(repo.working_tree_dir) / common
    refs = common / "refs" / "heads" / "population" / tag
    removed = []
    for lock in sorted(refs.rglob("*.lock")) if refs.is_dir() else []:
        lock.unlink(missing_ok=True)
        removed.append(str(lock.relative_to(common))[: -len(".lock")])
    return removed


def ref_commit(repo: git.Repo, branch: str) -> str | None:
    try:
        return repo.git.rev_parse("--verify", "--quiet", f"refs/heads/{branch}^{{commit}}")
    except git.GitCommandError:
        return None


def list_branches(repo: git.Repo, prefix: str) -> dict[str, str]:
    """{branch name: commit} for every branch under `prefix`."""
    out = repo.git.for_each_ref("--format=%(refname:short) %(objectname)", f"refs/heads/{prefix}")
    return dict(line.split(" ", 1) for line in out.splitlines() if line.strip())


def file_blob(repo: git.Repo, commit: str, path: str) -> str | None:
    """The blob id of `path` at `commit` (equal ids = identical content), None when absent."""
    try:
        return repo.git.rev_parse("--verify", "--quiet", f"{commit}:{path}")
    except git.GitCommandError:
        return None


def diff(repo: git.Repo, old: str, new: str) -> str:
    return repo.git.diff(old, new, stdout_as_string=True) + "\n"


# ---------------------------------------------------------------- worktrees

def add_worktree(repo: git.Repo, path: Path, branch: str) -> None:
    """Check `branch` out at `path` (idempotent: an existing worktree there is kept)."""
    path = Path(path)
    if (path / ".git").exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        repo.git.worktree("add", "--quiet", str(path), branch)
    except git.GitCommandError:          # a stale registration of a deleted worktree: prune, retry
        repo.git.worktree("prune")
        repo.git.worktree("add", "--quiet", str(path), branch)


def remove_worktree(repo: git.Repo, path: Path) -> None:
    """Remove a worktree (its branch stays); a missing one is fine."""
    path = Path(path)
    if path.exists():
        try:
            repo.git.worktree("remove", "--force", str(path))
        except git.GitCommandError:
            shutil.rmtree(path, ignore_errors=True)
    repo.git.worktree("prune")


def add_detached_worktree(repo: git.Repo, path: Path, commit: str, branch: str | None = None) -> None:
    """A fresh worktree at `commit`, on a new `branch` when given (replacing any old one)."""
    path = Path(path)
    if path.exists():
        remove_worktree(repo, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if branch:
        repo.git.worktree("add", "--quiet", "-B", branch, str(path), commit)
    else:
        repo.git.worktree("add", "--quiet", "--detach", str(path), commit)


# ---------------------------------------------------------------- bundles

def bundle_bytes(repo: git.Repo, commit: str, exclude: list[str] | tuple[str, ...] = ()) -> tuple[bytes, str]:
    """(bundle bytes, ref name inside the bundle) holding `commit` and its history, minus the
    history of the `exclude` commits (which the receiver must already have)."""
    ref = f"{_TMP_REF_PREFIX}/{uuid.uuid4().hex}"
    repo.git.update_ref(ref, commit)
    try:
        with tempfile.TemporaryDirectory(prefix="population-bundle-") as tmp:
            target = Path(tmp) / "out.bundle"
            repo.git.bundle("create", "--quiet", str(target), ref, *(f"^{c}" for c in exclude if c != commit))
            return target.read_bytes(), ref
    finally:
        repo.git.update_ref("-d", ref)


def fetch_bundle(repo: git.Repo, data: bytes, bundle_ref: str, dest_ref: str | None = None) -> str:
    """Fetch `bundle_ref` from bundle bytes into `repo` (under `dest_ref`, a full ref name, when
    given); returns the commit it points to."""
    with tempfile.TemporaryDirectory(prefix="population-bundle-") as tmp:
        source = Path(tmp) / "in.bundle"
        source.write_bytes(data)
        heads = repo.git.bundle("list-heads", str(source), bundle_ref)
        if not heads.strip():
            raise GitOpsError(f"bundle has no ref {bundle_ref}")
        commit = heads.split()[0]
        refspec = f"+{bundle_ref}:{dest_ref}" if dest_ref else bundle_ref
        repo.git.fetch("--quiet", "--no-tags", str(source), refspec)
    return commit


# ---------------------------------------------------------------- a worker's clone

def init_clone(path: Path) -> git.Repo:
    """An empty repository for a worker's node-local clone (filled by bundles)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    repo = git.Repo.init(path)
    with repo.config_writer() as config:
        config.set_value("user", "name", GIT_USER[0])
        config.set_value("user", "email", GIT_USER[1])
        config.set_value("gc", "auto", "0")          # no background gc racing the worker
        config.set_value("commit", "gpgsign", "false")
    return repo


def has_commit(repo: git.Repo, commit: str) -> bool:
    try:
        repo.git.cat_file("-e", f"{commit}^{{commit}}")
        return True
    except git.GitCommandError:
        return False


def commit_worktree(worktree: Path, message: str, paths: list[str]) -> str:
    """Commit `paths` of `worktree` (an empty commit when nothing changed); returns the hash."""
    repo = git.Repo(worktree)
    repo.git.add("--all", "--", *paths)
    repo.git.commit("--quiet", "--allow-empty", "--no-verify", "-m", message)
    return repo.head.commit.hexsha


def full_diff(worktree: Path, base: str) -> str:
    """Every change in `worktree` against `base`, untracked files included (index left clean)."""
    repo = git.Repo(worktree)
    repo.git.add("--all", "--intent-to-add")
    try:
        return repo.git.diff(base, stdout_as_string=True)
    finally:
        repo.git.reset("--quiet")
