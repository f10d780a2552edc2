"""Git side of the population: seed checks, refs, worktrees, and bundles between separate repos."""
from __future__ import annotations

from pathlib import Path

import git
import pytest

from population import gitops
from test_driver_support import git as run_git, make_seed_repo


@pytest.fixture
def seed(tmp_path) -> Path:
    return make_seed_repo(tmp_path / "seed")


def test_check_seed_returns_head_when_clean(seed):
    repo = gitops.open_run_repo(seed / "engine")       # any directory inside the repo
    assert Path(repo.working_tree_dir) == seed
    assert gitops.check_seed(repo, "engine/train.py") == run_git(seed, "rev-parse", "HEAD").strip()


@pytest.mark.parametrize("change", ["edit_train", "untracked_prepare", "staged_prepare"])
def test_check_seed_refuses_uncommitted_changes(seed, change):
    if change == "edit_train":
        (seed / "engine" / "train.py").write_text("# edited\n")
    elif change == "untracked_prepare":
        (seed / "prepare" / "extra.py").write_text("X = 1\n")
    else:
        (seed / "prepare" / "__init__.py").write_text("MAX_SEQ_LEN = 512\n")
        run_git(seed, "add", "prepare/__init__.py")
    with pytest.raises(gitops.GitOpsError, match="uncommitted changes in the seed"):
        gitops.check_seed(gitops.open_run_repo(seed), "engine/train.py")


def test_check_seed_ignores_changes_elsewhere(seed):
    (seed / "notes.txt").write_text("scratch\n")
    (seed / "program.md").write_text("changed\n")
    assert gitops.check_seed(gitops.open_run_repo(seed), "engine/train.py")


def test_open_run_repo_outside_git_is_one_clear_error(tmp_path):
    with pytest.raises(gitops.GitOpsError, match="not inside a git repository"):
        gitops.open_run_repo(tmp_path)


def test_bundle_moves_a_commit_into_a_separate_clone_and_back(seed, tmp_path):
    repo = gitops.open_run_repo(seed)
    parent = gitops.head_commit(repo)
    clone = gitops.init_clone(tmp_path / "node-local" / "clone")
    assert Path(clone.git_dir).resolve() != Path(repo.git_dir).resolve()
    assert not gitops.has_commit(clone, parent)

    data, ref = gitops.bundle_bytes(repo, parent)
    assert gitops.fetch_bundle(clone, data, ref) == parent
    assert gitops.has_commit(clone, parent)
    assert not [r for r in run_git(seed, "for-each-ref").splitlines() if "population-tmp" in r]  # temp ref gone

    # The worker's child goes back as a thin bundle (the driver already has the parent).
    worktree = tmp_path / "node-local" / "wt"
    gitops.add_detached_worktree(clone, worktree, parent, "population/t/m0001")
    (worktree / "engine" / "train.py").write_text("DEPTH = 9\n")
    child = gitops.commit_worktree(worktree, gitops.commit_message("deeper", exp_id=3, parent_commit=parent,
                                                                   member="m0001", agent="mutate"),
                                   ["engine/train.py"])
    thin, child_ref = gitops.bundle_bytes(clone, child, exclude=[parent])
    full, _ = gitops.bundle_bytes(clone, child)
    assert len(thin) < len(full)
    assert gitops.fetch_bundle(repo, thin, child_ref, "refs/heads/population/t/m0001") == child
    assert gitops.ref_commit(repo, "population/t/m0001") == child
    message = repo.commit(child).message
    assert message.startswith("deeper\n") and "Experiment-Id: 3" in message and f"Parent: {parent}" in message
    assert "DEPTH = 9" in gitops.diff(repo, parent, child)


def test_fetch_bundle_without_the_ref_is_an_error(seed):
    repo = gitops.open_run_repo(seed)
    data, _ = gitops.bundle_bytes(repo, gitops.head_commit(repo))
    with pytest.raises(gitops.GitOpsError, match="bundle has no ref refs/population-tmp/nope"):
        gitops.fetch_bundle(repo, data, "refs/population-tmp/nope")


# ---------------------------------------------------------------- fetch_bundle without `git fetch`

BIG_TRAIN = "".join(f"LAYER_{i}_WIDTH = {64 * i}  # a long file, so git stores the child as a delta\n"
                    for i in range(300))


def _child(clone: git.Repo, tmp_path: Path, parent: str, name: str, line: str) -> str:
    """A child of `parent` committed in `clone`, whose train.py gains `line`."""
    worktree = tmp_path / "wt" / name
    gitops.add_detached_worktree(clone, worktree, parent, f"population/t/{name}")
    train = worktree / "engine" / "train.py"
    train.write_text(train.read_text() + line + "\n")
    commit = gitops.commit_worktree(worktree, f"child {name}", ["engine/train.py"])
    gitops.remove_worktree(clone, worktree)
    return commit


@pytest.fixture
def driver_and_clone(tmp_path):
    """(driver repo, parent commit, a worker's clone holding the parent) with a long train.py."""
    repo = gitops.open_run_repo(make_seed_repo(tmp_path / "seed", train=BIG_TRAIN))
    parent = gitops.head_commit(repo)
    clone = gitops.init_clone(tmp_path / "clone")
    gitops.fetch_bundle(clone, *gitops.bundle_bytes(repo, parent))
    return repo, parent, clone


def _packs(repo: git.Repo) -> list[Path]:
    return sorted((Path(repo.git_dir) / "objects" / "pack").glob("*.pack"))


def test_fetch_bundle_lands_a_thin_child_and_moves_the_ref(driver_and_clone, tmp_path):
    repo, parent, clone = driver_and_clone
    child = _child(clone, tmp_path, parent, "m0001", "DEPTH = 9")
    data, ref = gitops.bundle_bytes(clone, child, exclude=[parent])
    assert gitops.read_bundle(data)[1] == [parent]               # thin: the parent is a prerequisite
    packs = _packs(repo)

    assert gitops.fetch_bundle(repo, data, ref, "refs/heads/population/t/m0001") == child
    assert gitops.ref_commit(repo, "population/t/m0001") == child
    assert run_git(Path(repo.working_dir), "show", f"{child}:engine/train.py") == BIG_TRAIN + "DEPTH = 9\n"
    assert run_git(Path(repo.working_dir), "fsck", "--connectivity-only", "--no-dangling").strip() == ""
    assert _packs(repo) == packs          # a child's few objects land loose: no pack per experiment


def test_fetch_bundle_keeps_a_large_bundle_as_one_pack(tmp_path):
    seed = make_seed_repo(tmp_path / "seed")
    for i in range(120):                  # more objects than git's unpack limit (100)
        (seed / "prepare" / f"part{i}.py").write_text(f"PART = {i}\n")
    run_git(seed, "add", "-A")
    run_git(seed, "commit", "-qm", "many files")
    repo = gitops.open_run_repo(seed)
    clone = gitops.init_clone(tmp_path / "clone")
    head = gitops.head_commit(repo)

    assert gitops.fetch_bundle(clone, *gitops.bundle_bytes(repo, head)) == head
    assert len(_packs(clone)) == 1
    assert run_git(Path(clone.working_dir), "show", f"{head}:prepare/part119.py") == "PART = 119\n"
    assert run_git(Path(clone.working_dir), "rev-list", "--count", head).strip() == "2"


def test_fetch_bundle_refuses_a_bundle_whose_prerequisite_is_missing(driver_and_clone, tmp_path):
    repo, parent, clone = driver_and_clone
    child = _child(clone, tmp_path, parent, "m0001", "DEPTH = 9")
    data, ref = gitops.bundle_bytes(clone, child, exclude=[parent])
    empty = gitops.init_clone(tmp_path / "empty")              # lacks the parent
    with pytest.raises(gitops.GitOpsError, match=f"bundle needs commit {parent}"):
        gitops.fetch_bundle(empty, data, ref, "refs/heads/population/t/m0001")
    assert gitops.ref_commit(empty, "population/t/m0001") is None
    assert not gitops.has_commit(empty, child)


def _pack_cut_in_half(data: bytes) -> bytes:
    start = data.index(b"PACK")
    return data[:start + (len(data) - start) // 2]


def _trailer_cut(data: bytes) -> bytes:
    return data[:-7]                                               # every object whole, the checksum not


def _byte_flipped_in_pack(data: bytes) -> bytes:
    at = data.index(b"PACK") + 20                                  # inside the first object
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


def _header_cut(data: bytes) -> bytes:
    return data[:data.index(b"\n") + 10]


@pytest.mark.parametrize("corrupt", [_pack_cut_in_half, _trailer_cut, _byte_flipped_in_pack, _header_cut,
                                     lambda data: b"not a bundle"],
                         ids=["pack cut in half", "trailer cut", "byte flipped in the pack", "header cut",
                              "not a bundle"])
def test_fetch_bundle_refuses_a_corrupt_bundle_with_one_line(driver_and_clone, tmp_path, corrupt):
    repo, parent, clone = driver_and_clone
    child = _child(clone, tmp_path, parent, "m0001", "DEPTH = 9")
    data, ref = gitops.bundle_bytes(clone, child, exclude=[parent])
    with pytest.raises(gitops.GitOpsError) as raised:
        gitops.fetch_bundle(repo, corrupt(data), ref, "refs/heads/population/t/m0001")
    assert "\n" not in str(raised.value) and str(raised.value)
    assert gitops.ref_commit(repo, "population/t/m0001") is None
    # A worker skips the fetch when it has the commit: a commit may land only with all it needs.
    if corrupt is not _trailer_cut:
        assert not gitops.has_commit(repo, child)
    elif gitops.has_commit(repo, child):
        run_git(Path(repo.working_dir), "rev-list", "--objects", child)       # raises if an object is missing


def test_fetch_bundle_refuses_a_bundle_whose_pack_lacks_the_ref_commit(driver_and_clone, tmp_path):
    repo, parent, clone = driver_and_clone
    child = _child(clone, tmp_path, parent, "m0001", "DEPTH = 9")
    other = _child(clone, tmp_path, parent, "m0002", "DEPTH = 10")
    data, ref = gitops.bundle_bytes(clone, child, exclude=[parent])
    lying = data.replace(child.encode(), other.encode(), 1)     # the header names a commit not in the pack
    for dest in ("refs/heads/population/t/m0002", None):
        with pytest.raises(gitops.GitOpsError, match=f"bundle lacks the commit {other}"):
            gitops.fetch_bundle(repo, lying, ref, dest)
    assert gitops.ref_commit(repo, "population/t/m0002") is None


def test_fetch_bundle_overwrites_an_existing_dest_ref(driver_and_clone, tmp_path):
    repo, parent, clone = driver_and_clone
    first = _child(clone, tmp_path, parent, "m0001", "DEPTH = 9")
    sibling = _child(clone, tmp_path, parent, "m0002", "DEPTH = 10")     # not a fast-forward of `first`
    dest = "refs/heads/population/t/m0001"
    gitops.fetch_bundle(repo, *gitops.bundle_bytes(clone, first, exclude=[parent]), dest)
    assert gitops.ref_commit(repo, "population/t/m0001") == first
    assert gitops.fetch_bundle(repo, *gitops.bundle_bytes(clone, sibling, exclude=[parent]), dest) == sibling
    assert gitops.ref_commit(repo, "population/t/m0001") == sibling


def test_worktree_removal_keeps_the_branch(seed, tmp_path):
    repo = gitops.open_run_repo(seed)
    head = gitops.head_commit(repo)
    gitops.set_ref(repo, gitops.member_branch("t", "m0000"), head)
    path = seed / "runs" / "t" / "members" / "m0000"
    gitops.add_worktree(repo, path, gitops.member_branch("t", "m0000"))
    gitops.add_worktree(repo, path, gitops.member_branch("t", "m0000"))   # idempotent
    assert (path / "engine" / "train.py").exists()
    gitops.remove_worktree(repo, path)
    assert not path.exists()
    assert gitops.ref_commit(repo, "population/t/m0000") == head
    assert gitops.list_branches(repo, "population/t/") == {"population/t/m0000": head}


def test_a_relative_worktree_path_is_the_current_folders_and_a_runs_branches_and_worktrees_are_listed(
        seed, monkeypatch):
    """From a subfolder (issue 29): a relative path means the same to git (which runs at the root)
    as to Python; list_worktrees, prunable ones included; ancestry_branches, commit_subject and
    delete_branch for `clean` and a lost child's retraining."""
    repo = gitops.open_run_repo(seed)
    head = gitops.head_commit(repo)
    (seed / "engine" / "train.py").write_text("LR = 1\n")
    run_git(seed, "commit", "-qam", "raise LR")
    child = gitops.head_commit(repo)
    gitops.set_ref(repo, "population/t/m0000", head)
    gitops.set_ref(repo, "population/t/m0001", child)
    gitops.set_ref(repo, "population/t/best", head)
    monkeypatch.chdir(seed / "engine")
    gitops.add_worktree(repo, Path("runs/t/members/m0001"), "population/t/m0001")
    assert (seed / "engine" / "runs" / "t" / "members" / "m0001" / "engine" / "train.py").read_text() == "LR = 1\n"
    listed = gitops.list_worktrees(repo)
    assert [(w["path"], w["branch"], w["prunable"]) for w in listed] == [
        (str(seed / "engine" / "runs" / "t" / "members" / "m0001"), "population/t/m0001", False)]
    import shutil
    shutil.rmtree(seed / "engine" / "runs")                      # deleted by hand: prunable
    assert gitops.list_worktrees(repo)[0]["prunable"]
    gitops.git_prune_worktrees(repo)
    assert gitops.list_worktrees(repo) == []
    assert gitops.ancestry_branches(repo, head, "population/t/") == {"population/t/m0000", "population/t/best"}
    assert gitops.ancestry_branches(repo, child, "population/t/") == {"population/t/m0000", "population/t/m0001",
                                                                       "population/t/best"}
    assert gitops.commit_subject(repo, child) == "raise LR"
    gitops.delete_branch(repo, "population/t/m0001")
    gitops.delete_branch(repo, "population/t/m0001")             # a missing one is fine
    assert set(gitops.list_branches(repo, "population/t/")) == {"population/t/m0000", "population/t/best"}


def test_file_blob_is_equal_for_identical_content(seed):
    repo = gitops.open_run_repo(seed)
    first = gitops.head_commit(repo)
    (seed / "program.md").write_text("other instructions\n")
    run_git(seed, "commit", "-qam", "only program.md changed")
    second = gitops.head_commit(repo)
    assert gitops.file_blob(repo, first, "engine/train.py") == gitops.file_blob(repo, second, "engine/train.py")
    assert gitops.file_blob(repo, first, "program.md") != gitops.file_blob(repo, second, "program.md")
    assert gitops.file_blob(repo, first, "missing.py") is None


def test_full_diff_includes_new_files_and_leaves_the_index_clean(seed):
    repo = gitops.open_run_repo(seed)
    (seed / "prepare" / "new.py").write_text("SNEAKY = 1\n")
    text = gitops.full_diff(seed, gitops.head_commit(repo))
    assert "prepare/new.py" in text and "SNEAKY = 1" in text
    assert run_git(seed, "diff", "--cached", "--name-only").strip() == ""


def test_fetch_bundle_runs_gits_auto_maintenance_as_fetch_did(tmp_path, monkeypatch):
    """Imports pile up packs (or loose objects); git's own gc --auto thresholds fold them."""
    monkeypatch.setattr(gitops, "_MAINTENANCE_EVERY", 1)
    seed = make_seed_repo(tmp_path / "seed")
    repo = gitops.open_run_repo(seed)
    clone = gitops.init_clone(tmp_path / "clone")
    run_git(Path(clone.working_dir), "config", "gc.auto", "6700")            # init_clone turns gc off
    run_git(Path(clone.working_dir), "config", "gc.autoPackLimit", "1")
    run_git(Path(clone.working_dir), "config", "gc.autoDetach", "false")     # finish before we look
    commits = []
    for batch in range(2):                # two large bundles: two packs, over the limit of one
        for i in range(110):
            (seed / "prepare" / f"b{batch}_{i}.py").write_text(f"PART = {batch}, {i}\n")
        run_git(seed, "add", "-A")
        run_git(seed, "commit", "-qm", f"batch {batch}")
        commits.append(gitops.head_commit(repo))
        gitops.fetch_bundle(clone, *gitops.bundle_bytes(repo, commits[-1]), f"refs/heads/b{batch}")
    assert len(_packs(clone)) == 1
    assert [gitops.ref_commit(clone, f"b{batch}") for batch in range(2)] == commits
