"""Issue 27: an agent with a writable worktree cannot make the worker's or driver's git run its code.

Real git in tmp dirs. Each attack plants a script that would write a marker file; a plain `git`
run first proves the plant works, then the confined gitops/guards functions must never write the
marker, and `check_worktree_link` must name the tampering (and none after `restore_worktree_link`).
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from population import gitops, guards
from test_driver_support import git as run_git, make_seed_repo

TRAIN = "engine/train.py"


def _script(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho \"$0 $*\" >> '{marker}'\n")
    path.chmod(0o755)
    return path


def _plain_git(cwd: Path, *args: str) -> None:
    """The unconfined git an attacker counts on (the user's environment, no -c settings)."""
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, capture_output=True)


@pytest.fixture
def setup(tmp_path):
    """(run repo, clone, worktree, its trusted git dir, marker path) as a worker has them mid-job."""
    repo = gitops.open_run_repo(make_seed_repo(tmp_path / "seed"))
    parent = gitops.head_commit(repo)
    clone = gitops.init_clone(tmp_path / "node" / "clone")
    gitops.fetch_bundle(clone, *gitops.bundle_bytes(repo, parent))
    worktree = tmp_path / "node" / "worktrees" / "7"
    gitops.add_detached_worktree(clone, worktree, parent, "population/t/m0001")
    gitdir = gitops.worktree_gitdir(clone, worktree)
    assert gitdir == Path(clone.git_dir) / "worktrees" / "7"
    assert guards.check_worktree_link(worktree, gitdir) is None
    return repo, clone, worktree, gitdir, tmp_path / "PWNED"


def _worker_steps(clone, worktree: Path, parent: str, gitdir: Path | None = None) -> str:
    """What the worker runs after the agent: diff, guard, fingerprint, commit, bundle."""
    gitops.full_diff(worktree, parent)
    guards.changed_paths(worktree)
    guards.enforce_train_file_only(worktree, TRAIN)
    guards.tree_fingerprint(worktree, "prepare")
    commit = gitops.commit_worktree(worktree, "child", [TRAIN])
    gitops.bundle_bytes(clone, commit, exclude=[parent])
    return commit


def _evil_gitdir(worktree: Path, marker: Path) -> Path:
    """A git dir the agent builds in an ignored folder: hooks, fsmonitor and a clean filter all
    run its script; `.gitattributes` puts every file through that filter."""
    evil = worktree / "__pycache__" / "evil"
    run_git(worktree, "init", "-q", str(evil))
    script = _script(evil / "payload.sh", marker)
    for hook in ("post-checkout", "post-commit", "pre-commit", "prepare-commit-msg", "reference-transaction",
                 "post-index-change"):
        _script(evil / "myhooks" / hook, marker)
    run_git(evil, "config", "core.hooksPath", str(evil / "myhooks"))
    run_git(evil, "config", "core.fsmonitor", str(script))
    run_git(evil, "config", "filter.evil.clean", f"{script} clean")
    run_git(evil, "config", "filter.evil.required", "false")
    (worktree / ".gitattributes").write_text("* filter=evil\n")
    return evil / ".git"


def test_rewritten_gitlink_runs_nothing_and_is_reported(setup):
    repo, clone, worktree, gitdir, marker = setup
    parent = gitops.head_commit(repo)
    evil = _evil_gitdir(worktree, marker)
    (worktree / ".git").write_text(f"gitdir: {evil}\n")
    (worktree / TRAIN).write_text("LR = 1  # the agent's edit\n")
    _plain_git(worktree, "status")
    assert marker.exists(), "the attack must work on unconfined git, or this test proves nothing"
    marker.unlink()

    commit = _worker_steps(clone, worktree, parent)

    assert not marker.exists()
    assert gitops.has_commit(clone, commit)                      # the commit landed in the real clone
    assert gitops.file_text(clone, commit, TRAIN) == "LR = 1  # the agent's edit"
    assert not (worktree / ".gitattributes").exists()            # reverted by the guard, as any other file
    reason = guards.check_worktree_link(worktree, gitdir)
    assert reason and "rewrote the worktree's .git link" in reason and str(evil) in reason
    guards.restore_worktree_link(worktree, gitdir)
    assert guards.check_worktree_link(worktree, gitdir) is None
    assert (worktree / ".git").read_text() == f"gitdir: {os.path.realpath(gitdir)}\n"
    gitops.remove_worktree(clone, worktree)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["directory", "symlink", "gone"])
def test_gitlink_replaced_by_a_directory_symlink_or_nothing(setup, kind):
    repo, clone, worktree, gitdir, marker = setup
    parent = gitops.head_commit(repo)
    evil = _evil_gitdir(worktree, marker)
    (worktree / ".git").unlink()
    if kind == "directory":
        evil.rename(worktree / ".git")
    elif kind == "symlink":
        (worktree / ".git").symlink_to(evil)
    if kind != "gone":
        _plain_git(worktree, "status")
        assert marker.exists()
        marker.unlink()

    _worker_steps(clone, worktree, parent)

    assert not marker.exists()
    reason = guards.check_worktree_link(worktree, gitdir)
    assert reason and reason.startswith("the agent rewrote the worktree's .git link")
    guards.restore_worktree_link(worktree, gitdir)
    assert guards.check_worktree_link(worktree, gitdir) is None
    assert guards.changed_paths(worktree) == []


def test_unrecorded_worktree_naming_a_git_dir_inside_itself_is_refused(setup):
    repo, clone, worktree, gitdir, marker = setup
    evil = _evil_gitdir(worktree, marker)
    (worktree / ".git").write_text(f"gitdir: {evil}\n")
    gitops._worktree_gitdirs.clear()                     # as if another process had made it
    with pytest.raises(gitops.GitOpsError, match="inside the worktree"):
        guards.changed_paths(worktree)
    # an explicit git dir is used; the evil git dir sits in an ignored folder, which counts too
    assert guards.changed_paths(worktree, gitdir=gitdir) == [".gitattributes", "__pycache__/"]
    assert not marker.exists()


def test_planted_hooks_never_run_in_the_worker_or_the_driver(setup):
    repo, clone, worktree, gitdir, marker = setup
    parent = gitops.head_commit(repo)
    hooks = ("post-checkout", "post-commit", "pre-commit", "prepare-commit-msg", "commit-msg",
             "reference-transaction", "post-index-change", "pre-auto-gc", "post-rewrite")
    for hooks_dir in (Path(clone.git_dir) / "hooks", Path(repo.git_dir) / "hooks"):
        for hook in hooks:
            _script(hooks_dir / hook, marker)
    for probed in (Path(clone.working_dir), Path(repo.working_tree_dir)):
        _plain_git(probed, "update-ref", "refs/heads/probe", parent)
        assert marker.exists()
        marker.unlink()
        _plain_git(probed, "update-ref", "-d", "refs/heads/probe")
        marker.unlink()
    (worktree / TRAIN).write_text("LR = 2\n")

    commit = _worker_steps(clone, worktree, parent)
    data, ref = gitops.bundle_bytes(clone, commit, exclude=[parent])
    assert gitops.fetch_bundle(repo, data, ref, "refs/heads/population/t/m0001") == commit   # the driver's side
    gitops.set_ref(repo, gitops.best_branch("t"), commit)
    members = Path(repo.working_tree_dir) / "runs" / "t" / "members" / "m0001"
    gitops.add_worktree(repo, members, "population/t/m0001")
    gitops.add_detached_worktree(repo, Path(repo.working_tree_dir) / "runs" / "seed-check", parent)
    gitops.diff(repo, parent, commit)
    gitops.remove_worktree(repo, members)
    gitops.add_detached_worktree(clone, worktree, commit, "population/t/m0002")    # the next job's checkout

    assert not marker.exists()
    reason = guards.check_worktree_link(worktree, gitops.worktree_gitdir(clone, worktree))
    assert reason and reason.startswith("git hooks were planted in the clone") and "post-checkout" in reason
    guards.restore_worktree_link(worktree, gitops.worktree_gitdir(clone, worktree))
    assert guards.check_worktree_link(worktree, gitops.worktree_gitdir(clone, worktree)) is None


@pytest.mark.parametrize("key", ["core.hooksPath", "core.fsmonitor", "include.path", "alias.status",
                                 "extensions.worktreeConfig"])
def test_changed_clone_config_runs_nothing_and_is_reported(setup, key):
    repo, clone, worktree, gitdir, marker = setup
    parent = gitops.head_commit(repo)
    script = _script(worktree / "__pycache__" / "payload.sh", marker)
    for hook in ("post-commit", "reference-transaction"):
        _script(worktree / "__pycache__" / "hooks" / hook, marker)
    value = {"core.hooksPath": str(worktree / "__pycache__" / "hooks"), "core.fsmonitor": str(script),
             "include.path": str(worktree / "__pycache__" / "extra"), "alias.status": f"!{script}",
             "extensions.worktreeConfig": "true"}[key]
    (worktree / "__pycache__" / "extra").write_text(f"[core]\n\tfsmonitor = {script}\n")
    run_git(Path(clone.working_dir), "config", key, value)
    if key == "extensions.worktreeConfig":
        (gitdir / "config.worktree").write_text(f"[core]\n\tfsmonitor = {script}\n")

    _worker_steps(clone, worktree, parent)

    assert not marker.exists()
    reason = guards.check_worktree_link(worktree, gitdir)
    if key == "extensions.worktreeConfig":      # the worktree's own config is named first
        assert reason == "the worktree's git dir has a config of its own (config.worktree)"
    else:
        assert reason and "the clone's git config was changed" in reason and key.lower() in reason
    guards.restore_worktree_link(worktree, gitdir)
    assert guards.check_worktree_link(worktree, gitdir) is None
    assert not (gitdir / "config.worktree").exists()


def test_config_check_without_a_snapshot_uses_what_init_clone_writes(setup, monkeypatch):
    repo, clone, worktree, gitdir, marker = setup
    monkeypatch.setattr(gitops, "_clone_configs", {})          # another process made the clone
    assert guards.check_worktree_link(worktree, gitdir) is None
    run_git(Path(clone.working_dir), "config", "filter.x.clean", "touch /tmp/x")
    assert "filter.x.clean=touch /tmp/x" in guards.check_worktree_link(worktree, gitdir)


def test_a_worktrees_own_config_is_reported(setup):
    repo, clone, worktree, gitdir, marker = setup
    (gitdir / "config.worktree").write_text("[core]\n\tfsmonitor = /bin/true\n")
    assert guards.check_worktree_link(worktree, gitdir) == \
        "the worktree's git dir has a config of its own (config.worktree)"
    guards.restore_worktree_link(worktree, gitdir)
    assert guards.check_worktree_link(worktree, gitdir) is None


def test_safe_env_keeps_the_callers_own_config_entries(monkeypatch):
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "user.name")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "someone")
    env = gitops.safe_env()
    assert env["GIT_CONFIG_KEY_1"] == "core.hooksPath" and env["GIT_CONFIG_VALUE_1"] == os.devnull
    assert int(env["GIT_CONFIG_COUNT"]) == 1 + len(gitops.SAFE_CONFIG)
    assert "GIT_CONFIG_KEY_0" not in env


def test_a_nested_repository_in_the_worktree_is_never_entered(setup):
    """A gitlink in the index (say the agent made the train file a repository) must not make
    `status` run git inside the agent's repository, whose config would then be obeyed."""
    repo, clone, worktree, gitdir, marker = setup
    nested = worktree / "engine" / "sub"
    run_git(worktree, "init", "-q", str(nested))
    (nested / "f.txt").write_text("x\n")
    run_git(nested, "add", "f.txt")
    run_git(nested, "commit", "-qm", "sub")
    gitops.worktree_git(worktree).add("engine/sub")              # a gitlink, as `git add --all` would make
    script = _script(nested / ".git" / "payload.sh", marker)
    run_git(nested, "config", "filter.evil.clean", str(script))
    (nested / ".gitattributes").write_text("* filter=evil\n")
    (nested / "f.txt").write_text("y\n")                      # same size: git reads it through the filter
    _plain_git(worktree, "status")
    assert marker.exists()
    marker.unlink()

    guards.changed_paths(worktree)
    gitops.full_diff(worktree, gitops.head_commit(repo))

    assert not marker.exists()


def test_the_train_file_made_a_repository_is_a_violation_and_never_a_gitlink(setup):
    repo, clone, worktree, gitdir, marker = setup
    train = worktree / TRAIN
    train.unlink()
    run_git(worktree, "init", "-q", str(train))
    (train / "f.txt").write_text("x\n")
    run_git(train, "add", "f.txt")
    run_git(train, "commit", "-qm", "nested")
    with pytest.raises(gitops.GitOpsError, match="nested git repository"):
        gitops.commit_worktree(worktree, "child", [TRAIN])
    assert gitops._gitlinks(gitops.worktree_git(worktree)) == []           # taken back out of the index
    assert guards.enforce_train_file_only(worktree, TRAIN) == [TRAIN + "/"]
    assert train.is_file() and guards.changed_paths(worktree) == []        # the seed's train file again
    commit = gitops.commit_worktree(worktree, "child", [TRAIN])
    assert gitops.object_header(clone, f"{commit}:{TRAIN}")[1] == "blob"   # never a gitlink
    assert not marker.exists()
