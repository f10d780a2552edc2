"""Catching a secret that an agent wrote into its change, before the change is committed.

`population.agents.env` names the secrets (variables ending in KEY, TOKEN, SECRET, PASSWORD) and
scrubs them from what an agent prints. Scrubbing cannot apply to the change itself: a commit
whose diff says `[REDACTED]` is not the code that trained. An agent that can read its own key
(or is talked into it by a prompt injection) could paste it into the train file, and from there it
would reach the commit, `diff.patch`, the run repository and wherever that is pushed. The worker
refuses such a change instead: `leaked_names(diff)` says which variables' values it contains.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from population.agents.env import secret_items, secret_names_in


def leaked_names(text: str, source: Mapping[str, str] | None = None, extra: Iterable[tuple[str, str]] = ()) -> list[str]:
    """Sorted names of the secret-looking variables of `source` (default os.environ), and of the
    (name, value) pairs of `extra`, whose value occurs in `text` as itself or in a common encoding
    (base64 standard or urlsafe, padded or not, at any byte offset of a longer blob; hex; reversed;
    split by whitespace or newlines: see `secret_encodings`). Values too short to be a secret are
    ignored, as in the scrubber."""
    return sorted(secret_names_in(text, secret_items(source, extra)))
