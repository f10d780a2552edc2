"""Secrets are caught in their common encodings, not only verbatim: `leaked_names` names them and
the scrubbers replace them (issue 27, confinement)."""
from __future__ import annotations

import base64
import os

import pytest

from population.agents.env import REDACTED, scrub, scrub_secrets, secret_encodings
from population.secrets import leaked_names

NAME, VALUE = "OPENAI_API_KEY", "sk-PLANTED-openai-0123456789abcdef?>~"  # '?>~' makes + and / appear in base64
SOURCE = {NAME: VALUE, "HOME": "/home/someone"}
MARKER = f"[REDACTED:{NAME}]"
RAW = VALUE.encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _in_blob(offset: int) -> str:
    """The base64 of the value inside a longer binary blob, `offset` bytes after its start."""
    prefix = (b"\x89PNG\r\n\x1a\n" * 2)[: 12 + offset]
    return _b64(prefix + RAW + b"\x00trailing bytes\xff")


ENCODINGS = {
    "exact": VALUE,
    "base64": _b64(RAW),
    "base64 unpadded": _b64(RAW).rstrip("="),
    "base64 urlsafe": base64.urlsafe_b64encode(RAW).decode(),
    "base64 urlsafe unpadded": base64.urlsafe_b64encode(RAW).decode().rstrip("="),
    "base64 in a blob, offset 0": _in_blob(0),
    "base64 in a blob, offset 1": _in_blob(1),
    "base64 in a blob, offset 2": _in_blob(2),
    "base64 urlsafe in a blob, offset 1": _in_blob(1).replace("+", "-").replace("/", "_"),
    "base64 wrapped at 76 columns": "\n".join(_b64(b"x" * 50 + RAW)[i:i + 76] for i in range(0, 200, 76)),
    "hex": RAW.hex(),
    "hex upper": RAW.hex().upper(),
    "reversed": VALUE[::-1],
    "split by a space": VALUE[:8] + " " + VALUE[8:],
    "split by newlines": VALUE[:5] + "\n" + VALUE[5:17] + "\r\n  " + VALUE[17:],
    "one character per line": "\n".join(VALUE),
    "one character per line, indented": "\n".join(f"    {c}" for c in VALUE),
}


def test_the_blob_encodings_do_not_contain_the_plain_base64():
    """The offset cases really are different strings from the value's own base64."""
    assert _b64(RAW).rstrip("=")[:-1] in _in_blob(0)
    for offset in (1, 2):
        assert _b64(RAW).rstrip("=")[:-1] not in _in_blob(offset)
        assert all(_b64(RAW)[4 * i:4 * i + 4] not in _in_blob(offset) for i in range(len(RAW) // 3))
    assert any(c in _b64(RAW) for c in "+/")


@pytest.mark.parametrize("kind", ENCODINGS)
def test_each_encoding_is_found(kind):
    text = f"before\n{ENCODINGS[kind]}\nafter"
    assert leaked_names(text, SOURCE) == [NAME]
    assert leaked_names(text, {}, extra=[("api_key", VALUE)]) == ["api_key"]


@pytest.mark.parametrize("kind", ENCODINGS)
def test_each_encoding_is_scrubbed(kind):
    text = f"before\n{ENCODINGS[kind]}\nafter"
    scrubbed = scrub_secrets(text, SOURCE)
    assert MARKER in scrubbed
    assert scrubbed.startswith("before\n") and scrubbed.endswith("\nafter")
    assert leaked_names(scrubbed, SOURCE) == []
    plain = scrub(text, [VALUE])
    assert REDACTED in plain and leaked_names(plain, SOURCE) == []


def test_every_occurrence_is_scrubbed_and_the_rest_kept():
    split = VALUE[:4] + "\n" + VALUE[4:]
    text = f"a={VALUE} b={RAW.hex()} c={VALUE[::-1]} d={_b64(RAW)} e={split}\nend"
    assert scrub_secrets(text, SOURCE) == f"a={MARKER} b={MARKER} c={MARKER} d={MARKER} e={MARKER}\nend"


def test_two_secrets_get_their_own_names():
    source = {"A_TOKEN": "first-secret-value", "B_PASSWORD": "second-secret-value"}
    text = f"x first-secret-value y {_b64(b'second-secret-value')} z"
    assert leaked_names(text, source) == ["A_TOKEN", "B_PASSWORD"]
    assert scrub_secrets(text, source) == "x [REDACTED:A_TOKEN] y [REDACTED:B_PASSWORD] z"


def test_a_secret_containing_another_is_redacted_whole():
    source = {"SHORT_KEY": "inner-secret", "LONG_KEY": "outer-inner-secret-tail"}
    assert scrub_secrets("[outer-inner-secret-tail]", source) == "[[REDACTED:LONG_KEY]]"
    assert leaked_names("outer-inner-secret-tail", source) == ["LONG_KEY", "SHORT_KEY"]


def test_a_short_value_matches_nothing():
    source = {"PIN_PASSWORD": "12345", "FLAG_TOKEN": "true"}
    text = f"12345 true {_b64(b'12345')} {b'12345'.hex()} 54321 eurt\n1\n2\n3\n4\n5"
    assert secret_encodings("12345") == [] and secret_encodings("1 2 3 4 5") == []
    assert leaked_names(text, source) == []
    assert scrub_secrets(text, source) is text
    assert scrub(text, ["12345", "true"]) == text


def test_text_without_the_secret_is_unchanged():
    text = ("diff --git a/engine/train.py b/engine/train.py\n+LR = 0.05\n"
            f"{_b64(b'an unrelated blob of bytes, no key in it')}\n{b'other'.hex()}\n  indented\ttabs\r\n")
    assert leaked_names(text, SOURCE) == []
    assert scrub_secrets(text, SOURCE) is text
    assert scrub(text, [VALUE]) == text
    assert scrub_secrets("", SOURCE) == ""


def test_non_secret_names_and_the_environment_default(monkeypatch):
    assert leaked_names(f"home is {_b64(b'/home/someone')}", SOURCE) == []
    monkeypatch.setenv("SOME_TEST_SECRET", "env-secret-0123456789")
    text = "\n".join("env-secret-0123456789")
    assert "SOME_TEST_SECRET" in leaked_names(text)
    assert "[REDACTED:SOME_TEST_SECRET]" in scrub_secrets(text)
    assert os.environ["SOME_TEST_SECRET"] not in scrub_secrets(f"k={os.environ['SOME_TEST_SECRET']}")
