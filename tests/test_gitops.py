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
    with pytest.raises((gitops.GitOpsError, git.GitCommandError)):
        gitops.fetch_bundle(repo, data, "refs/population-tmp/nope")


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
