"""Stopping a subprocess and everything it started: agents and trainings both run in a session of
their own (`start_new_session=True`), so their process group is the unit to signal."""
from __future__ import annotations

import os
import signal
import subprocess


def signal_group(pgid: int, sig: int) -> None:
    """Send `sig` to a process group; a group that is already gone is not an error."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_group(proc: subprocess.Popen, grace_s: float = 3.0) -> None:
    """SIGTERM the group led by `proc`, give it `grace_s` seconds, then SIGKILL what is left, and reap
    `proc`. With no grace, straight to SIGKILL (leftover children of a process that already exited)."""
    if grace_s:
        signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    signal_group(proc.pid, signal.SIGKILL)
    proc.wait()
