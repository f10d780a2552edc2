"""Guards: only the train file may change; prepare/ fingerprinted including uncommitted edits."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from population.guards import changed_paths, enforce_train_file_only, tree_fingerprint

TRAIN = "engine/train.py"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo), *args],
                          check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path) -> Path:
    root = tmp_path / "repo"
    files = {TRAIN: "LR = 0.04\n", "engine/other.py": "X = 1\n", "prepare/__init__.py": "A = 1\n",
             "prepare/tasks.py": "B = 2\n", "README.md": "hello\n", ".gitignore": "__pycache__/\n"}
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "seed")
    return root


def test_only_train_file_changes_survive(repo):
    (repo / TRAIN).write_text("LR = 0.05\n")
    (repo / "prepare" / "tasks.py").write_text("B = 3\n")              # tracked edit
    (repo / "README.md").unlink()                                      # tracked deletion
    (repo / "engine" / "other.py").write_text("X = 2\n")
    git(repo, "add", "engine/other.py")                                # staged edit
    (repo / "new_dir" / "deep").mkdir(parents=True)
    (repo / "new_dir" / "deep" / "new.py").write_text("evil\n")        # untracked file
    (repo / "prepare" / "extra.py").write_text("C = 1\n")
    git(repo, "add", "prepare/extra.py")                               # staged new file
    (repo / "we ird name.txt").write_text("x\n")
    (repo / ".agent").mkdir()
    (repo / ".agent" / "description").write_text("scratch\n")         # allowed scratch space

    violations = enforce_train_file_only(repo, TRAIN)

    assert violations == sorted(["README.md", "engine/other.py", "new_dir/deep/new.py",
                                 "prepare/extra.py", "prepare/tasks.py", "we ird name.txt"])
    assert changed_paths(repo) == sorted([".agent/description", TRAIN])
    assert (repo / TRAIN).read_text() == "LR = 0.05\n"
    assert (repo / "README.md").read_text() == "hello\n"
    assert (repo / "prepare" / "tasks.py").read_text() == "B = 2\n"
    assert (repo / "engine" / "other.py").read_text() == "X = 1\n"
    assert not (repo / "new_dir").exists() and not (repo / "prepare" / "extra.py").exists()
    assert not git(repo, "diff", "--cached", "--name-only").strip()


def test_clean_worktree_has_no_violations(repo):
    (repo / TRAIN).write_text("LR = 0.06\n")
    assert enforce_train_file_only(repo, TRAIN) == []
    assert (repo / TRAIN).read_text() == "LR = 0.06\n"


def test_fingerprint_catches_uncommitted_new_and_deleted_files_but_not_ignored_ones(repo):
    base = tree_fingerprint(repo, "prepare")
    assert base == tree_fingerprint(repo, "prepare")
    (repo / "prepare" / "__pycache__").mkdir()
    (repo / "prepare" / "__pycache__" / "x.pyc").write_bytes(b"\0")    # ignored by git
    (repo / TRAIN).write_text("LR = 1\n")                              # outside the directory
    assert tree_fingerprint(repo, "prepare") == base

    (repo / "prepare" / "tasks.py").write_text("B = 2 \n")
    edited = tree_fingerprint(repo, "prepare")
    assert edited != base
    (repo / "prepare" / "tasks.py").write_text("B = 2\n")
    assert tree_fingerprint(repo, "prepare") == base

    (repo / "prepare" / "new.py").write_text("")
    assert tree_fingerprint(repo, "prepare") != base
    (repo / "prepare" / "new.py").unlink()
    (repo / "prepare" / "tasks.py").unlink()
    assert tree_fingerprint(repo, "prepare") != base


def test_fingerprint_is_the_same_in_another_clone_and_sees_mode_changes(repo, tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    assert tree_fingerprint(clone, "prepare") == tree_fingerprint(repo, "prepare")
    os.chmod(clone / "prepare" / "tasks.py", 0o755)
    assert tree_fingerprint(clone, "prepare") != tree_fingerprint(repo, "prepare")
