"""The byte protocol between the trusted evaluator and the model server (pure framing).

Token ids go one way, logits come back; nothing is ever unpickled on the trusted side, so a model
server that sends garbage can only produce a clear error, never run code in the evaluator.

    request:  b"LOAD"                          load the child's model now (the server starts early,
                                               while the training runs)
              b"ROWS" <u32 B> <u32 T>          then B*T little-endian int64 token ids
    reply:    b"REDY"                          the model is loaded
              b"LOGT" <u32 B> <u32 T> <u32 V>  then B*T*V little-endian float32 logits
              b"DONE" <u32 B> <u32 T> <u32 V>  the logits are in the shared GPU buffer (cuda_share.py),
                                               in its half n % 2 for the n-th request (from 0)
              b"FAIL" <u32 n>                  then n bytes of UTF-8: why the model could not answer

The evaluator sends the next ROWS as soon as it has a reply, then scores that reply while the server
computes the next one (it never writes while the server may be blocked writing a reply to it).
"""
from __future__ import annotations

import struct
from typing import BinaryIO

import numpy as np

ROWS, LOGITS, FAIL = b"ROWS", b"LOGT", b"FAIL"
LOAD, READY, DONE = b"LOAD", b"REDY", b"DONE"
MAX_REPLY_BYTES = 64 << 30      # a reply larger than this is refused before it is read


class WireError(RuntimeError):
    """The other side failed, went away or broke the protocol; the message is one line."""


class ProtocolError(WireError):
    """The other side sent bytes the protocol does not allow (not a failure it reported)."""


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise WireError(f"the model server closed its output after {n - left} of {n} bytes")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def write_rows(stream: BinaryIO, x: np.ndarray) -> None:
    B, T = x.shape
    stream.write(ROWS + struct.pack("<II", B, T) + np.ascontiguousarray(x, dtype="<i8").tobytes())
    stream.flush()


def write_magic(stream: BinaryIO, magic: bytes) -> None:
    stream.write(magic)
    stream.flush()


def read_load(stream: BinaryIO) -> bool:
    """Wait for the LOAD request; False at a clean end of input (the evaluation was called off)."""
    magic = stream.read(4)
    if not magic:
        return False
    if magic != LOAD:
        raise ProtocolError(f"expected a LOAD request, got {magic!r}")
    return True


def read_ready(stream: BinaryIO) -> None:
    magic = _read_exact(stream, 4)
    if magic == FAIL:
        _raise_failure(stream)
    if magic != READY:
        raise ProtocolError(f"expected the model server to be ready, got {magic!r}")


def read_rows(stream: BinaryIO) -> np.ndarray | None:
    """The next request, or None at a clean end of input."""
    magic = stream.read(4)
    if not magic:
        return None
    if magic != ROWS:
        raise ProtocolError(f"expected a ROWS request, got {magic!r}")
    B, T = struct.unpack("<II", _read_exact(stream, 8))
    return np.frombuffer(_read_exact(stream, 8 * B * T), dtype="<i8").reshape(B, T)


def write_logits(stream: BinaryIO, logits: np.ndarray) -> None:
    B, T, V = logits.shape
    stream.write(LOGITS + struct.pack("<III", B, T, V) + np.ascontiguousarray(logits, dtype="<f4").tobytes())
    stream.flush()


def write_done(stream: BinaryIO, shape: tuple[int, int, int]) -> None:
    stream.write(DONE + struct.pack("<III", *shape))
    stream.flush()


def write_failure(stream: BinaryIO, message: str) -> None:
    data = message.encode("utf-8", errors="replace")[:4096]
    stream.write(FAIL + struct.pack("<I", len(data)) + data)
    stream.flush()


def _raise_failure(stream: BinaryIO) -> None:
    (n,) = struct.unpack("<I", _read_exact(stream, 4))
    raise WireError(_read_exact(stream, min(n, 4096)).decode("utf-8", errors="replace"))


def _read_shape(stream: BinaryIO, B: int, T: int, V: int) -> None:
    shape = struct.unpack("<III", _read_exact(stream, 12))
    if shape != (B, T, V):
        raise WireError(f"the model returned logits of shape {shape}, expected {(B, T, V)} "
                        "(load_model's model must map token ids (B, T) to logits (B, T, vocab))")


def _read_reply(stream: BinaryIO, expected: bytes, B: int, T: int, V: int) -> None:
    """The header of the reply to a request of shape (B, T): `expected` with exactly (B, T, V), a
    failure the server reported (WireError), or bytes the protocol does not allow (ProtocolError)."""
    magic = _read_exact(stream, 4)
    if magic == FAIL:
        _raise_failure(stream)
    if magic != expected:
        raise ProtocolError(f"expected {expected.decode()}, got {magic!r}")
    _read_shape(stream, B, T, V)


def read_logits(stream: BinaryIO, B: int, T: int, V: int) -> np.ndarray:
    """The reply to a request of shape (B, T): logits of exactly (B, T, V), else WireError."""
    _read_reply(stream, LOGITS, B, T, V)
    if 4 * B * T * V > MAX_REPLY_BYTES:
        raise ProtocolError(f"a reply of {4 * B * T * V} bytes is over the limit")
    return np.frombuffer(_read_exact(stream, 4 * B * T * V), dtype="<f4").reshape(B, T, V)


def read_done(stream: BinaryIO, B: int, T: int, V: int) -> None:
    """The reply to a request of shape (B, T) in shared-buffer mode: DONE with exactly (B, T, V)."""
    _read_reply(stream, DONE, B, T, V)
