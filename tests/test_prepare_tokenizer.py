"""Tokenizer: training, the plain JSON file, round trips and the per-token byte counts."""
from __future__ import annotations

import json

import pytest

from prepare.constants import SPECIAL_TOKENS
from prepare.tokenizer import TOKENIZER_FILE, Tokenizer, get_token_bytes, train_tokenizer

from conftest import TEST_VOCAB_SIZE


@pytest.fixture(scope="module")
def tokenizer(prepared_cache):
    return Tokenizer.from_directory()


def test_vocab_layout_puts_the_specials_last_and_bos_first_of_them(tokenizer):
    assert tokenizer.get_vocab_size() == TEST_VOCAB_SIZE
    assert tokenizer.get_bos_token_id() == TEST_VOCAB_SIZE - len(SPECIAL_TOKENS)
    assert [tokenizer.enc.encode_single_token(s) for s in SPECIAL_TOKENS] == list(range(TEST_VOCAB_SIZE - 4, TEST_VOCAB_SIZE))


@pytest.mark.parametrize("text", [
    "def f(x):\n    return x ** 2  # ok\n",
    "Grüße, naïve café — “quotes” ½ 你好世界 こんにちは 🙂👍🏽 e\u0301 \u200b",
    "numbers 1234567 and 3.14159, tabs\tand\r\nnewlines",
])
def test_round_trips_unicode_text(tokenizer, text):
    ids = tokenizer.encode(text)
    assert all(0 <= i < tokenizer.get_bos_token_id() for i in ids)
    assert tokenizer.decode(ids) == text


def test_batch_encode_prepends_bos_to_each_document(tokenizer):
    texts = ["first doc", "", "third 你好"]
    bos = tokenizer.get_bos_token_id()
    batch = tokenizer.encode(texts, prepend=bos)
    assert [ids[0] for ids in batch] == [bos] * 3
    assert [ids[1:] for ids in batch] == [tokenizer.encode(t) for t in texts]
    assert tokenizer.encode("x", prepend=SPECIAL_TOKENS[0])[0] == bos


def test_byte_counts_come_from_raw_token_bytes(tokenizer, prepared_cache):
    counts = get_token_bytes("cpu").tolist()
    assert len(counts) == tokenizer.get_vocab_size()
    for i in range(tokenizer.get_bos_token_id()):
        assert counts[i] == len(tokenizer.enc.decode_single_token_bytes(i))
    assert counts[tokenizer.get_bos_token_id():] == [0] * len(SPECIAL_TOKENS)
    # Tokens that are not valid UTF-8 on their own (lone continuation bytes, split characters)
    # decode to U+FFFD; counting decode().encode() would say 3 bytes (the reference's issue #384).
    invalid = [i for i in range(tokenizer.get_bos_token_id())
               if not _is_utf8(tokenizer.enc.decode_single_token_bytes(i))]
    assert invalid, "a byte-level BPE always has tokens that are not valid UTF-8 alone"
    assert any(counts[i] != len(tokenizer.decode([i]).encode("utf-8")) for i in invalid)
    assert counts[0x80] == 1 and len(tokenizer.decode([0x80]).encode("utf-8")) == 3
    # Over a real text, the counts add up to its UTF-8 length exactly.
    text = "naïve 你好 🙂 code"
    assert sum(counts[i] for i in tokenizer.encode(text)) == len(text.encode("utf-8"))


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_file_is_plain_json_and_reloads_identically(tokenizer, tmp_path):
    path = tokenizer.save(tmp_path)
    data = json.loads(path.read_text())
    assert data["special_tokens"] == {s: TEST_VOCAB_SIZE - 4 + i for i, s in enumerate(SPECIAL_TOKENS)}
    assert len(data["mergeable_ranks"]) == TEST_VOCAB_SIZE - 4
    again = Tokenizer.from_directory(tmp_path)
    text = "reload 你好 🙂"
    assert again.encode(text) == tokenizer.encode(text)
    assert again.token_byte_lengths() == tokenizer.token_byte_lengths()


def test_a_damaged_file_is_refused_with_a_clear_error(tokenizer, tmp_path):
    path = tokenizer.save(tmp_path)
    path.write_text(path.read_text()[:-50])
    with pytest.raises(ValueError, match=f"{TOKENIZER_FILE} is not a valid tokenizer file"):
        Tokenizer.from_directory(tmp_path)
    with pytest.raises(FileNotFoundError, match="python -m prepare"):
        Tokenizer.from_directory(tmp_path / "missing")


def test_training_gives_the_requested_vocab_and_refuses_too_small_ones():
    texts = ["the quick brown fox jumps over the lazy dog 你好"] * 50 + ["lorem ipsum dolor sit amet"] * 50
    small = train_tokenizer(iter(texts), vocab_size=300)
    assert small.get_vocab_size() == 300
    assert small.decode(small.encode(texts[0])) == texts[0]
    assert len(small.encode("the quick brown fox")) < len("the quick brown fox".encode())
    with pytest.raises(ValueError, match="at least 260"):
        train_tokenizer(iter(texts), vocab_size=200)
