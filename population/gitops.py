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
import subprocess
import tempfile
import uuid
from collections import Counter
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
    found = object_header(repo, f"{commit}:{path}")
    return found[0] if found else None


def file_text(repo: git.Repo, commit: str, path: str) -> str:
    """The content of `path` at `commit` (raises GitCommandError when absent)."""
    return repo.git.show(f"{commit}:{path}")


def object_header(repo: git.Repo, name: str) -> tuple[str, str] | None:
    """(object id, type) of `name` (an id or `<commit>:<path>`), None when absent. Asks GitPython's
    long-lived `cat-file --batch-check`: no git process per call (the driver asks per experiment)."""
    try:
        object_id, kind, _ = repo.git.get_object_header(name)
    except ValueError:                      # "<name> missing"
        return None
    return _text(object_id), _text(kind)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value     # GitPython 3 answers bytes


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
    """Import `bundle_ref` from bundle bytes into `repo` (and point `dest_ref`, a full ref name, at
    it when given, forced); returns the commit it points to.

    Not `git fetch <bundle>`: fetch and `bundle verify` walk every ref of the receiving repository
    (advertisement, connectivity, prerequisite check against --all), so their cost grows with the
    run's branches (one per experiment). Here the prerequisites are looked up by id, the pack is
    stored as fetch would store it, and one `update-ref` moves the ref: no step reads all refs."""
    refs, prerequisites, pack = read_bundle(data)
    commit = refs.get(bundle_ref)
    if commit is None:
        raise GitOpsError(f"bundle has no ref {bundle_ref}")
    missing = [c for c in prerequisites if not has_commit(repo, c)]
    if missing:
        raise GitOpsError(f"bundle needs commit {missing[0]}, which {repo.working_dir} lacks")
    _store_pack(repo, pack)
    if dest_ref:
        try:
            repo.git.update_ref(dest_ref, commit)
        except git.GitCommandError:
            if has_commit(repo, commit):
                raise                               # git's own reason (a lock, a full disk...)
            raise GitOpsError(f"bundle lacks the commit {commit} of its ref {bundle_ref}") from None
    elif not has_commit(repo, commit):
        raise GitOpsError(f"bundle lacks the commit {commit} of its ref {bundle_ref}")
    _imports[repo.git_dir] += 1
    if _imports[repo.git_dir] % _MAINTENANCE_EVERY == 0:     # fetch ran it after every fetch
        repo.git.maintenance("run", "--auto", "--quiet")     # gc once loose objects or packs pile up
    return commit


_BUNDLE_SIGNATURES = (b"# v2 git bundle", b"# v3 git bundle")
_OBJECT_ID_LENGTHS = (40, 64)       # sha1, sha256
_UNPACK_LIMIT = 100                 # git's transfer.unpackLimit: smaller packs become loose objects
_MAINTENANCE_EVERY = 20             # imports per `maintenance run --auto` (a process; gc needs thousands)
_imports: Counter[str] = Counter()  # imports per repository, in this process


def read_bundle(data: bytes) -> tuple[dict[str, str], list[str], bytes]:
    """({ref: commit}, prerequisite commits, pack bytes) of a git bundle (gitformat-bundle(5));
    GitOpsError (one line) when the bytes are not one."""
    header_end = data.find(b"\n\n")
    lines = data[:max(header_end, 0)].split(b"\n")
    if header_end < 0 or lines[0] not in _BUNDLE_SIGNATURES:
        raise GitOpsError("corrupt bundle: no git bundle header")
    refs, prerequisites = {}, []
    for line in lines[1:]:
        text = line.decode("utf-8", "replace")
        if text.startswith("@"):
            if not text.startswith("@object-format="):      # a filter (partial bundle) or newer
                raise GitOpsError(f"unsupported bundle capability {text[1:]!r}")
            continue
        object_id, _, name = text.removeprefix("-").partition(" ")
        if len(object_id) not in _OBJECT_ID_LENGTHS or not all(c in "0123456789abcdef" for c in object_id):
            raise GitOpsError(f"corrupt bundle: bad header line {text[:80]!r}")
        if text.startswith("-"):
            prerequisites.append(object_id)
        elif name:
            refs[name] = object_id
        else:
            raise GitOpsError(f"corrupt bundle: bad header line {text[:80]!r}")
    pack = data[header_end + 2:]
    if not pack.startswith(b"PACK") or len(pack) < 12:
        raise GitOpsError("corrupt bundle: no pack after the header")
    return refs, prerequisites, pack


def _store_pack(repo: git.Repo, pack: bytes) -> None:
    """Store the pack's objects as `git fetch` would: a small (thin) pack as loose objects, so a
    long run leaves one pack per gc rather than one per child; a large one as a pack (thin bases
    appended). Git checks the pack either way and refuses a corrupt one; --strict writes commits
    and trees only once every object parsed and every link resolved, so a commit that lands has
    all it needs (a worker skips the fetch of a commit it has)."""
    objects = int.from_bytes(pack[8:12], "big")
    args = (["unpack-objects", "-q", "--strict"] if objects < _UNPACK_LIMIT
            else ["index-pack", "--stdin", "--fix-thin"])       # written whole or not at all
    _git_with_input(repo, args, pack, "could not import the bundle")


def _git_with_input(repo: git.Repo, args: list[str], data: bytes, what: str) -> bytes:
    """stdout of `git <args>` run in `repo` with `data` on stdin; GitOpsError with git's first line."""
    done = subprocess.run([git.Git.GIT_PYTHON_GIT_EXECUTABLE or "git", *args], cwd=repo.working_dir,
                          input=data, capture_output=True)
    if done.returncode != 0:
        said = next((line.strip() for line in done.stderr.decode("utf-8", "replace").splitlines() if line.strip()),
                    f"exit code {done.returncode}")
        raise GitOpsError(f"{what}: git {args[0]}: {said}")
    return done.stdout


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
    found = object_header(repo, f"{commit}^{{commit}}")
    return found is not None and found[1] == "commit"


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
