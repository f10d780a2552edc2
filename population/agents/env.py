"""The environment an agent runs in, and keeping the driver's secrets out of what it returns.

Agents get a minimal environment (PATH, HOME, LANG, TERM) plus ONLY the keys their spec needs, so a
Claude agent never sees the OpenAI key and vice versa. Whatever an agent prints is scrubbed of every
secret value found in the driver's environment before it is recorded.
"""
from __future__ import annotations

import base64
import bisect
import os
import re
from collections.abc import Iterable, Mapping

BASE_VARIABLES = ("PATH", "HOME", "LANG", "TERM")
SECRET_SUFFIXES = ("KEY", "TOKEN", "SECRET", "PASSWORD")
REDACTED = "[REDACTED]"
# Values this short are too likely to occur by chance in ordinary text ("1", "true").
_MIN_SECRET_LENGTH = 6


def minimal_env(keys: Iterable[str] = (), source: Mapping[str, str] | None = None) -> dict[str, str]:
    """PATH, HOME, LANG, TERM and the named `keys`, taken from `source` (default: os.environ), and
    PYTHONDONTWRITEBYTECODE=1."""
    source = os.environ if source is None else source
    env = {name: source[name] for name in BASE_VARIABLES if name in source}
    env.setdefault("PATH", os.defpath)
    env.setdefault("LANG", "C.UTF-8")
    env["PYTHONDONTWRITEBYTECODE"] = "1"     # an agent leaves no file but its edit, not even __pycache__ (guards.py)
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


def redaction_marker(name: str | None = None) -> str:
    """`[REDACTED]`, or `[REDACTED:NAME]` when the variable's name is known (a name is no secret)."""
    return f"[REDACTED:{name}]" if name else REDACTED


_WHITESPACE = re.compile(r"\s+")
_B64_TO_URLSAFE = str.maketrans("+/", "-_")


def _squash(text: str) -> str:
    return _WHITESPACE.sub("", text)


def secret_encodings(value: str) -> list[str]:
    """The forms of `value` searched for, longest first, all without whitespace (they are matched
    against the text with its whitespace removed, which also catches a value split by spaces or
    newlines, one character per line, or base64 wrapped at 76 columns): the value itself, reversed,
    hex (lower and upper), base64 standard and urlsafe with and without padding, and the base64 of
    the value at each of the 3 byte offsets inside a longer blob (only the characters that depend on
    the value alone). Forms shorter than the minimum secret length are left out; none at all for a
    value that is itself too short."""
    value = _squash(value)
    if len(value) < _MIN_SECRET_LENGTH:
        return []
    raw = value.encode("utf-8")
    forms = {value, value[::-1], raw.hex(), raw.hex().upper()}
    padded = base64.b64encode(raw).decode("ascii")
    for encoded in (padded, padded.rstrip("=")):
        forms.update((encoded, encoded.translate(_B64_TO_URLSAFE)))
    for offset in range(3):  # the value preceded by `offset` bytes of some longer blob
        encoded = base64.b64encode(bytes(offset) + raw).decode("ascii")
        first = -(-offset * 8 // 6)            # the first character made of the value's bits only
        last = (offset + len(raw)) * 8 // 6    # past the last one
        core = encoded[first:last]
        forms.update((core, core.translate(_B64_TO_URLSAFE)))
    return sorted((f for f in forms if len(f) >= _MIN_SECRET_LENGTH), key=lambda f: (-len(f), f))


def secret_items(source: Mapping[str, str] | None = None,
                 extra: Iterable[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """(name, value) of every secret-looking variable of `source` (default os.environ) plus the
    `extra` pairs, leaving out values too short to be a secret; longest value first."""
    source = os.environ if source is None else source
    items = {(name, value) for name, value in source.items() if is_secret_name(name) and value}
    items.update((name, value) for name, value in extra if value)
    return sorted(((n, v) for n, v in items if len(v) >= _MIN_SECRET_LENGTH), key=lambda nv: (-len(nv[1]), nv))


def _patterns(items: Iterable[tuple[str | None, str]]) -> dict[str, str | None]:
    """Every encoding of the values of `items` (name, value), mapped to its name."""
    patterns: dict[str, str | None] = {}
    for name, value in items:
        for form in secret_encodings(value):
            patterns.setdefault(form, name)
    return patterns


def _matches(haystack: str, patterns: Mapping[str, str | None]) -> list[list]:
    """Sorted, merged [start, end, name] spans of `haystack` where one of `patterns` occurs;
    overlapping matches are merged and keep the name of the one starting first (the longest there)."""
    found = []
    for form, name in patterns.items():
        index = haystack.find(form)
        while index >= 0:
            found.append((index, index + len(form), name))
            index = haystack.find(form, index + 1)
    spans: list[list] = []
    for start, end, name in sorted(found, key=lambda f: (f[0], -f[1])):
        if spans and start < spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end, name])
    return spans


def _split_spans(text: str, patterns: Mapping[str, str | None]) -> list[tuple[int, int, str | None]]:
    """`_matches` against `text` with its whitespace removed, as (start, end, name) spans of `text`
    (a span includes the whitespace that split the value)."""
    spans = _matches(_squash(text), patterns) if patterns and text else []
    if not spans:
        return []
    segments = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    squashed_starts, position = [], 0
    for start, end in segments:
        squashed_starts.append(position)
        position += end - start

    def original(p: int) -> int:  # the index in `text` of character `p` of the squashed text
        i = bisect.bisect_right(squashed_starts, p) - 1
        return segments[i][0] + p - squashed_starts[i]

    return [(original(start), original(end - 1) + 1, name) for start, end, name in spans]


def find_secrets(text: str, items: Iterable[tuple[str | None, str]]) -> list[tuple[int, int, str | None]]:
    """Where in `text` any encoding (`secret_encodings`) of the values of `items` (name, value)
    occurs, whitespace inside it ignored: sorted, non-overlapping (start, end, name) spans of `text`."""
    return _split_spans(text, _patterns(items))


def secret_names_in(text: str, items: Iterable[tuple[str, str]]) -> set[str]:
    """The names of `items` (name, value) whose value occurs in `text` in any of its encodings
    (`secret_encodings`)."""
    squashed = _squash(text)
    return {name for name, value in items if any(form in squashed for form in secret_encodings(value))}


def _replace(text: str, spans: Iterable) -> str:
    parts, position = [], 0
    for start, end, name in spans:
        parts += [text[position:start], redaction_marker(name)]
        position = end
    if not parts:
        return text
    parts.append(text[position:])
    return "".join(parts)


def _redact(text: str, items: Iterable[tuple[str | None, str]]) -> str:
    patterns = _patterns(items)
    if not patterns or not text:
        return text
    text = _replace(text, _matches(text, patterns))    # the common case, verbatim: no position mapping
    return _replace(text, _split_spans(text, patterns))


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every encoding of each of the `secrets` values replaced by `[REDACTED]`."""
    return _redact(text, [(None, value) for value in secrets])


def scrub_secrets(text: str, source: Mapping[str, str] | None = None,
                  extra: Iterable[tuple[str, str]] = ()) -> str:
    """`text` with every encoding (`secret_encodings`) of the value of each secret-looking variable
    of `source` (default os.environ) and of each (name, value) of `extra` replaced by
    `[REDACTED:NAME]`. Unchanged (the same object) when it holds none. For run.log, descriptions,
    diffs, transcripts and prompts before they are recorded."""
    return _redact(text, secret_items(source, extra))
