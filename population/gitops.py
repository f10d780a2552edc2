"""Git for the population: the run repository's refs and worktrees, workers' clones, and bundles.

Nothing here assumes a shared filesystem: a commit travels between the driver's repository and a
worker's clone as the bytes of a `git bundle`, so one node and many take the same path.

Refs in the run repository (the repo the user runs in):
    population/<tag>/<member>   one branch per member (kept after a cull: the lineage is never lost)
    population/<tag>/best       the champion, moved on promotion

Confinement (issue 27): an agent can write its worktree, so nothing here trusts what a repository
or worktree says about running programs. Every git process runs with `safe_env()`: hooks off
(core.hooksPath=/dev/null), no fsmonitor, no system config; diffs with --no-ext-diff
--no-textconv. A worktree's git runs against the git dir recorded on the repository's side
(`worktree_gitdir`, remembered when the worktree is made), never the one its `.git` file names.
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


# ---------------------------------------------------------------- confinement (issue 27)

# Command-scope settings (as `git -c`, over any repository's config) for every git process:
# no hook, no fsmonitor program, nothing recursing into an agent's nested repositories.
SAFE_CONFIG = (("core.hooksPath", os.devnull), ("core.fsmonitor", "false"), ("core.untrackedCache", "false"),
               ("commit.gpgSign", "false"), ("tag.gpgSign", "false"), ("submodule.recurse", "false"))
# In an agent's worktree also: status/diff never step into a nested repository (its config is the agent's).
_WORKTREE_CONFIG = (("diff.ignoreSubmodules", "all"),)
_NO_EXTERNAL_DIFF = ("--no-ext-diff", "--no-textconv")


def safe_env(git_dir: str | os.PathLike | None = None, work_tree: str | os.PathLike | None = None) -> dict[str, str]:
    """Environment additions for a confined git process: SAFE_CONFIG through GIT_CONFIG_COUNT
    (after any the caller's environment already holds; git's children inherit them), no system
    config, no prompt; with `git_dir`, an explicit GIT_DIR and GIT_WORK_TREE (no discovery) and
    no look into nested repositories."""
    try:
        base = max(0, int(os.environ.get("GIT_CONFIG_COUNT") or 0))
    except ValueError:
        base = 0
    settings = SAFE_CONFIG + (_WORKTREE_CONFIG if git_dir is not None else ())
    env = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_COUNT": str(base + len(settings))}
    for i, (key, value) in enumerate(settings, start=base):
        env[f"GIT_CONFIG_KEY_{i}"], env[f"GIT_CONFIG_VALUE_{i}"] = key, value
    if git_dir is not None:
        env["GIT_DIR"] = str(git_dir)
        env["GIT_WORK_TREE"] = str(work_tree)
    return env


def _git(repo: git.Repo) -> git.Git:
    """`repo.git`, confined: its environment (kept for later calls and GitPython's long-lived
    cat-file processes) carries `safe_env()`."""
    repo.git.update_environment(**safe_env())
    return repo.git


def confine(repo: git.Repo) -> git.Repo:
    """`repo` with every later `repo.git` call confined (as every function here does itself)."""
    _git(repo)
    return repo


_worktree_gitdirs: dict[str, Path] = {}    # worktree (real path) -> its git dir, as made here


def worktree_gitdir(repo: git.Repo, path: str | os.PathLike) -> Path:
    """The git dir of `repo`'s linked worktree at `path`, found on the repository's side (the
    back-pointer `<common dir>/worktrees/<name>/gitdir`), never from the worktree's `.git` file,
    which the agent can rewrite. GitOpsError when `repo` has no worktree there."""
    want = Path(os.path.realpath(path))
    registry = Path(repo.common_dir) / "worktrees"
    for entry in sorted(registry.iterdir()) if registry.is_dir() else []:
        try:
            pointer = Path((entry / "gitdir").read_text().strip())
        except OSError:
            continue
        pointer = pointer if pointer.is_absolute() else entry / pointer
        # The worktree directory itself, not `.git` resolved (the agent may make that a symlink).
        if pointer.name == ".git" and Path(os.path.realpath(pointer.parent)) == want:
            return entry
    raise GitOpsError(f"{repo.git_dir} has no worktree at {path}")


def registered_gitdir(worktree: str | os.PathLike) -> Path | None:
    """The git dir recorded when this process made `worktree` (add_worktree, add_detached_worktree)."""
    return _worktree_gitdirs.get(os.path.realpath(worktree))


def _register(repo: git.Repo, path: Path) -> None:
    _worktree_gitdirs[os.path.realpath(path)] = worktree_gitdir(repo, path)


def worktree_git(worktree: str | os.PathLike, gitdir: str | os.PathLike | None = None) -> git.Git:
    """A confined git runner for `worktree`: `safe_env()` with an explicit GIT_DIR, which is
    `gitdir`, else the one recorded when this process made the worktree. Only for a worktree
    made elsewhere is `.git` read: a directory (a main checkout), or a file naming a git dir
    outside the worktree (one inside it is the agent's own, refused)."""
    worktree = Path(worktree)
    gitdir = gitdir or registered_gitdir(worktree) or _discovered_gitdir(worktree)
    runner = git.Git(worktree)
    runner.update_environment(**safe_env(gitdir, worktree))
    return runner


def _discovered_gitdir(worktree: Path) -> Path:
    link = worktree / ".git"
    if link.is_dir() and not link.is_symlink():
        return link
    try:
        text = link.read_text(errors="replace") if link.is_file() and not link.is_symlink() else ""
    except OSError:
        text = ""
    if not text.startswith("gitdir:"):
        raise GitOpsError(f"{worktree} is not a git worktree")
    target = Path(text[len("gitdir:"):].strip())
    target = Path(os.path.realpath(target if target.is_absolute() else worktree / target))
    if target.is_relative_to(os.path.realpath(worktree)):
        raise GitOpsError(f"{worktree}/.git names a git dir inside the worktree ({target}); refused")
    return target


def config_entries(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(key, value) of each setting in the config file at `path` (git's parser: includes not
    followed, listed as include.path), in file order; [] when there is no file."""
    if not Path(path).is_file():
        return []
    out = git.Git().execute([git.Git.GIT_PYTHON_GIT_EXECUTABLE or "git", "config", "--file", str(path),
                             "--null", "--list"], env=safe_env(), stdout_as_string=True)
    entries = []
    for item in out.split("\0"):
        if item:
            key, _, value = item.partition("\n")
            entries.append((key, value))
    return entries


# common dir -> (config bytes, entries) as init_clone wrote them, in this process
_clone_configs: dict[str, tuple[bytes, tuple[tuple[str, str], ...]]] = {}


def clone_config_snapshot(common_dir: str | os.PathLike) -> tuple[bytes, tuple[tuple[str, str], ...]] | None:
    """(bytes, entries) of the clone's config as `init_clone` wrote it in this process, or None."""
    return _clone_configs.get(os.path.realpath(common_dir))


# ---------------------------------------------------------------- names

def member_branch(tag: str, member: str) -> str:
    return f"population/{tag}/{member}"


def best_branch(tag: str) -> str:
    return f"population/{tag}/best"


def commit_message(description: str, *, exp_id: int, parent_commit: str, member: str, agent: str) -> str:
    """The agent's description as the subject; the experiment's identity in trailers."""
    subject = " ".join((description or "").split()) or "(no description)"
    return (f"{subject}\n\nExperiment-Id: {exp_id}\nMember: {member}\n"
            f"Parent: {parent_commit}\nAgent: {agent}\n")


# ---------------------------------------------------------------- the run repository

def open_run_repo(path: str | os.PathLike | None) -> git.Repo:
    """The git repository at `path` (or around the current directory: any folder inside it),
    opened at its root."""
    start = Path(path or os.getcwd()).expanduser().absolute()
    if path and not start.exists():
        raise GitOpsError(f"--repo {path} does not exist")
    try:
        repo = git.Repo(start, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        if path:
            raise GitOpsError(f"--repo {path} is not inside a git repository") from None
        raise GitOpsError(f"{start} is not inside a git repository; run in the project repo or pass --repo") from None
    if repo.bare:
        raise GitOpsError(f"{repo.git_dir} is a bare repository; --repo needs a checkout")
    return confine(git.Repo(repo.working_tree_dir))


def head_commit(repo: git.Repo) -> str:
    try:
        return repo.head.commit.hexsha
    except ValueError:
        raise GitOpsError(f"{repo.working_tree_dir} has no commit yet; commit the seed first") from None


def dirty_paths(repo: git.Repo, paths: list[str]) -> list[str]:
    """Paths under `paths` that differ from HEAD (modified, staged or untracked, not ignored)."""
    out = _git(repo).status("--porcelain", "--untracked-files=all", "--", *paths)
    return [line[3:] for line in out.splitlines() if line.strip()]


def check_seed(repo: git.Repo, train_file: str, fixed_dirs: tuple[str, ...] = ("prepare",)) -> str:
    """The seed commit (HEAD), after checking that the train file and the fixed directories are
    committed and clean, so that every member starts from exactly what the user sees."""
    commit = head_commit(repo)
    try:
        _git(repo).cat_file("-e", f"{commit}:{train_file}")
    except git.GitCommandError:
        raise GitOpsError(f"the seed commit {commit[:9]} has no {train_file}; commit it first") from None
    dirty = dirty_paths(repo, [train_file, *fixed_dirs])
    if dirty:
        shown = ", ".join(dirty[:5]) + (" ..." if len(dirty) > 5 else "")
        raise GitOpsError(f"uncommitted changes in the seed ({shown}); commit or stash them first")
    return commit


def set_ref(repo: git.Repo, branch: str, commit: str) -> None:
    _git(repo).update_ref(f"refs/heads/{branch}", commit)


def delete_branch(repo: git.Repo, branch: str) -> None:
    """Delete `branch` (a missing one is fine)."""
    _git(repo).update_ref("-d", f"refs/heads/{branch}")


def clear_run_ref_locks(repo: git.Repo, tag: str) -> list[str]:
    """Delete the `.lock` files of the run's own refs (refs/heads/population/<tag>/...), left by a
    driver killed inside `git update-ref`. Only the driver holding the run's lock writes these
    refs, so any lock there is stale; the user's other locks (index.lock...) are left alone.
    Returns the removed ref names."""
    common = Path(_git(repo).rev_parse("--git-common-dir"))
    common = common if common.is_absolute() else Path(repo.working_tree_dir) / common
    refs = common / "refs" / "heads" / "population" / tag
    removed = []
    for lock in sorted(refs.rglob("*.lock")) if refs.is_dir() else []:
        lock.unlink(missing_ok=True)
        removed.append(str(lock.relative_to(common))[: -len(".lock")])
    return removed


def ref_commit(repo: git.Repo, branch: str) -> str | None:
    try:
        return _git(repo).rev_parse("--verify", "--quiet", f"refs/heads/{branch}^{{commit}}")
    except git.GitCommandError:
        return None


def list_branches(repo: git.Repo, prefix: str) -> dict[str, str]:
    """{branch name: commit} for every branch under `prefix`."""
    out = _git(repo).for_each_ref("--format=%(refname:short) %(objectname)", f"refs/heads/{prefix}")
    return dict(line.split(" ", 1) for line in out.splitlines() if line.strip())


def ancestry_branches(repo: git.Repo, commit: str, prefix: str) -> set[str]:
    """The branches under `prefix` whose commit `commit` descends from (or is): its ancestry."""
    out = _git(repo).for_each_ref("--format=%(refname:short)", f"--merged={commit}", f"refs/heads/{prefix}")
    return {line.strip() for line in out.splitlines() if line.strip()}


def file_blob(repo: git.Repo, commit: str, path: str) -> str | None:
    """The blob id of `path` at `commit` (equal ids = identical content), None when absent."""
    found = object_header(repo, f"{commit}:{path}")
    return found[0] if found else None


def file_text(repo: git.Repo, commit: str, path: str) -> str:
    """The content of `path` at `commit` (raises GitCommandError when absent)."""
    return _git(repo).show(f"{commit}:{path}")


def object_header(repo: git.Repo, name: str) -> tuple[str, str] | None:
    """(object id, type) of `name` (an id or `<commit>:<path>`), None when absent. Asks GitPython's
    long-lived `cat-file --batch-check`: no git process per call (the driver asks per experiment)."""
    try:
        object_id, kind, _ = _git(repo).get_object_header(name)
    except ValueError:                      # "<name> missing"
        return None
    return _text(object_id), _text(kind)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value     # GitPython 3 answers bytes


def commit_subject(repo: git.Repo, commit: str) -> str:
    """The first line of `commit`'s message (a child's: its agent's description)."""
    return _git(repo).log("-1", "--format=%s", commit).strip()


def diff(repo: git.Repo, old: str, new: str) -> str:
    return _git(repo).diff(*_NO_EXTERNAL_DIFF, old, new, stdout_as_string=True) + "\n"


# ---------------------------------------------------------------- worktrees

def add_worktree(repo: git.Repo, path: Path, branch: str) -> None:
    """Check `branch` out at `path` (idempotent: an existing worktree there is kept). A relative
    `path` is the current folder's, as for Python (git itself runs at the repository's root)."""
    path = Path(path).absolute()
    if os.path.lexists(path / ".git"):
        try:
            _register(repo, path)
        except GitOpsError:              # not a worktree of `repo`: its git stays unrecorded
            pass
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        _git(repo).worktree("add", "--quiet", str(path), branch)
    except git.GitCommandError:          # a stale registration of a deleted worktree: prune, retry
        _git(repo).worktree("prune")
        _git(repo).worktree("add", "--quiet", str(path), branch)
    _register(repo, path)


def list_worktrees(repo: git.Repo) -> list[dict]:
    """The repository's linked worktrees (not its main checkout): {"path", "branch", "prunable"}
    each, `prunable` when its folder is gone (deleted by hand)."""
    out = _git(repo).worktree("list", "--porcelain")
    entries, entry = [], {}
    for line in out.splitlines() + [""]:
        if not line.strip():
            if entry:
                entries.append(entry)
            entry = {}
            continue
        key, _, value = line.partition(" ")
        if key == "worktree":
            entry = {"path": value, "branch": "", "prunable": False}
        elif key == "branch":
            entry["branch"] = value.removeprefix("refs/heads/")
        elif key == "prunable":
            entry["prunable"] = True
    main = os.path.realpath(repo.working_tree_dir)
    return [e for e in entries if os.path.realpath(e["path"]) != main]


def git_prune_worktrees(repo: git.Repo) -> None:
    """Forget the registrations of worktrees whose folder is gone."""
    _git(repo).worktree("prune")


def remove_worktree(repo: git.Repo, path: Path) -> None:
    """Remove a worktree (its branch stays); a missing one is fine."""
    path = Path(path).absolute()
    _worktree_gitdirs.pop(os.path.realpath(path), None)
    if path.exists():
        try:
            _git(repo).worktree("remove", "--force", str(path))
        except git.GitCommandError:
            shutil.rmtree(path, ignore_errors=True)
    _git(repo).worktree("prune")


def add_detached_worktree(repo: git.Repo, path: Path, commit: str, branch: str | None = None) -> None:
    """A fresh worktree at `commit`, on a new `branch` when given (replacing any old one)."""
    path = Path(path).absolute()
    if path.exists():
        remove_worktree(repo, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if branch:
        _git(repo).worktree("add", "--quiet", "-B", branch, str(path), commit)
    else:
        _git(repo).worktree("add", "--quiet", "--detach", str(path), commit)
    _register(repo, path)


# ---------------------------------------------------------------- bundles

def bundle_bytes(repo: git.Repo, commit: str, exclude: list[str] | tuple[str, ...] = ()) -> tuple[bytes, str]:
    """(bundle bytes, ref name inside the bundle) holding `commit` and its history, minus the
    history of the `exclude` commits (which the receiver must already have)."""
    ref = f"{_TMP_REF_PREFIX}/{uuid.uuid4().hex}"
    _git(repo).update_ref(ref, commit)
    try:
        with tempfile.TemporaryDirectory(prefix="population-bundle-") as tmp:
            target = Path(tmp) / "out.bundle"
            _git(repo).bundle("create", "--quiet", str(target), ref, *(f"^{c}" for c in exclude if c != commit))
            return target.read_bytes(), ref
    finally:
        _git(repo).update_ref("-d", ref)


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
            _git(repo).update_ref(dest_ref, commit)
        except git.GitCommandError:
            if has_commit(repo, commit):
                raise                               # git's own reason (a lock, a full disk...)
            raise GitOpsError(f"bundle lacks the commit {commit} of its ref {bundle_ref}") from None
    elif not has_commit(repo, commit):
        raise GitOpsError(f"bundle lacks the commit {commit} of its ref {bundle_ref}")
    _imports[repo.git_dir] += 1
    if _imports[repo.git_dir] % _MAINTENANCE_EVERY == 0:     # fetch ran it after every fetch
        _git(repo).maintenance("run", "--auto", "--quiet")     # gc once loose objects or packs pile up
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
                          input=data, capture_output=True, env={**os.environ, **safe_env()})
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
    config_file = Path(repo.common_dir) / "config"
    _clone_configs[os.path.realpath(repo.common_dir)] = (config_file.read_bytes(),
                                                         tuple(config_entries(config_file)))
    return confine(repo)


def has_commit(repo: git.Repo, commit: str) -> bool:
    found = object_header(repo, f"{commit}^{{commit}}")
    return found is not None and found[1] == "commit"


def commit_worktree(worktree: Path, message: str, paths: list[str], gitdir: Path | None = None) -> str:
    """Commit `paths` of `worktree` (an empty commit when nothing changed); returns the hash.
    Runs against the recorded git dir (`worktree_git`), whatever the worktree's `.git` says."""
    runner = worktree_git(worktree, gitdir)
    runner.add("--all", "--", *paths, *_gitlink_exclusions(runner))
    nested = [p for p in _gitlinks(runner, paths) if p not in _gitlinks(runner, paths, "HEAD")]
    if nested:      # a repository the agent made: later `git add`s would run git (and its config) in it
        runner.reset("-q", "--", *nested)           # the index as HEAD has it there
        raise GitOpsError(f"{nested[0]} in {worktree} is a nested git repository; refused, never committed")
    runner.commit("--quiet", "--allow-empty", "--no-verify", "-m", message)
    return runner.rev_parse("--verify", "HEAD^{commit}")


def full_diff(worktree: Path, base: str, gitdir: Path | None = None) -> str:
    """Every change in `worktree` against `base`, untracked files included (index left clean)."""
    runner = worktree_git(worktree, gitdir)
    runner.add("--all", "--intent-to-add", "--", ".", *_gitlink_exclusions(runner))
    try:
        return runner.diff(*_NO_EXTERNAL_DIFF, base, stdout_as_string=True)
    finally:
        runner.reset("--quiet")


def _gitlinks(runner: git.Git, paths: list[str] | tuple[str, ...] = (), tree: str | None = None) -> list[str]:
    """Paths of the submodule entries (gitlinks) in the index, or in `tree` when given."""
    if tree:
        try:
            out = runner.ls_tree("-r", "-z", tree, "--", *paths)
        except git.GitCommandError:          # no HEAD yet
            return []
        return [entry.split("\t", 1)[1] for entry in out.split("\0") if entry.startswith("160000 ")]
    out = runner.ls_files("-s", "-z", "--", *paths)
    return [entry.split("\t", 1)[1] for entry in out.split("\0") if entry.startswith("160000 ")]


def _gitlink_exclusions(runner: git.Git) -> list[str]:
    """Pathspecs leaving the index's gitlinks out of `git add`: for each, add runs `git status`
    inside the directory, a repository the agent may have built (its config obeyed there)."""
    return [f":(top,exclude,literal){path}" for path in _gitlinks(runner)]
