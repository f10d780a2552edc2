"""Parse the summary block a train file prints at its end (pure).

The block is every line after the last line that is exactly `---`, of the form `key: value`.
Anything else there (warnings, garbage, non-numeric values) is ignored.
"""
from __future__ import annotations

from collections.abc import Iterable

SEPARATOR = "---"


def parse_summary(log_text: str, keys: Iterable[str] | None = None) -> dict[str, float]:
    """The numeric `key: value` pairs of the last summary block, {} when there is none.

    With `keys`, only those keys are returned. NaN and infinite values are returned as parsed
    (a diverged run prints `val_bpb: nan`; the caller decides that it is a crash).
    """
    lines = log_text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.rstrip() == SEPARATOR]  # "\r", trailing blanks ok
    if not starts:
        return {}
    wanted = set(keys) if keys is not None else None
    found: dict[str, float] = {}
    for line in lines[starts[-1] + 1:]:
        key, sep, value = line.partition(":")
        key = key.strip()
        if not sep or not key or (wanted is not None and key not in wanted):
            continue
        try:
            found[key] = float(value.strip())
        except ValueError:
            continue
    return found


def tail(text: str, n_lines: int) -> str:
    """The last `n_lines` lines of `text` (all of it if shorter)."""
    if n_lines <= 0:
        return ""
    return "\n".join(text.splitlines()[-n_lines:])
