"""Catching a secret that an agent wrote into its change, before the change is committed.

`population.agents.env` names the secrets (variables ending in KEY, TOKEN, SECRET, PASSWORD) and
scrubs them from what an agent prints. Scrubbing cannot apply to the change itself: a commit
whose diff says `[REDACTED]` is not the code that trained. An agent that can read its own key
(or is talked into it by a prompt injection) could paste it into the train file, and from there it
would reach the commit, `diff.patch`, the run repository and wherever that is pushed. The worker
refuses such a change instead: `leaked_names(diff)` says which variables' values it contains.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from population.agents.env import is_secret_name, secret_values


def leaked_names(text: str, source: Mapping[str, str] | None = None, extra: Iterable[tuple[str, str]] = ()) -> list[str]:
    """Sorted names of the secret-looking variables of `source` (default os.environ), and of the
    (name, value) pairs of `extra`, whose value occurs in `text`. Values too short to be a secret
    are ignored, as in the scrubber."""
    source = os.environ if source is None else source
    candidates = [(name, value) for name, value in source.items() if is_secret_name(name)] + list(extra)
    long_enough = set(secret_values({}, extra=[value for _, value in candidates]))
    return sorted({name for name, value in candidates if value in long_enough and value in text})
