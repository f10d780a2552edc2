"""The environment an agent runs in, and keeping the driver's secrets out of what it returns.

Agents get a minimal environment (PATH, HOME, LANG, TERM) plus ONLY the keys their spec needs, so a
Claude agent never sees the OpenAI key and vice versa. Whatever an agent prints is scrubbed of every
secret value found in the driver's environment before it is recorded.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

BASE_VARIABLES = ("PATH", "HOME", "LANG", "TERM")
SECRET_SUFFIXES = ("KEY", "TOKEN", "SECRET", "PASSWORD")
REDACTED = "[REDACTED]"
# Values this short are too likely to occur by chance in ordinary text ("1", "true").
_MIN_SECRET_LENGTH = 6


def minimal_env(keys: Iterable[str] = (), source: Mapping[str, str] | None = None) -> dict[str, str]:
    """PATH, HOME, LANG, TERM and the named `keys`, taken from `source` (default: os.environ)."""
    source = os.environ if source is None else source
    env = {name: source[name] for name in BASE_VARIABLES if name in source}
    env.setdefault("PATH", os.defpath)
    env.setdefault("LANG", "C.UTF-8")
    for name in keys:
        if source.get(name):
            env[name] = source[name]
    return env


def is_secret_name(name: str) -> bool:
    return name.upper().endswith(SECRET_SUFFIXES)


def secret_values(source: Mapping[str, str] | None = None, extra: Iterable[str | None] = ()) -> list[str]:
    """Every secret-looking value of `source` plus `extra` ones, longest first (so that a secret
    containing another one is redacted whole)."""
    source = os.environ if source is None else source
    values = {value for name, value in source.items() if is_secret_name(name)}
    values.update(v for v in extra if v)
    return sorted((v for v in values if len(v) >= _MIN_SECRET_LENGTH), key=len, reverse=True)


def scrub(text: str, secrets: Iterable[str]) -> str:
    for value in secrets:
        text = text.replace(value, REDACTED)
    return text
