"""A key's decision state as bytes, for the state changelog: one layout, in one place.

``magic, method code, section count`` then sections, each a 4-byte tag, a length and
its bytes. Each part of a decider (the error history, suppression, the range and
seasonal checks) writes and reads its own section, so a state written before a part
existed restores, and that part starts fresh.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

import numpy as np

MAGIC = b"SDD3"
_HEAD = struct.Struct("<4sBB")
_SECTION = struct.Struct("<4sI")


class StateError(ValueError):
    """A state that is not this decider's, or is damaged."""


def pack(code: int, sections: Mapping[bytes, bytes]) -> bytes:
    out = [_HEAD.pack(MAGIC, code, len(sections))]
    for tag, body in sections.items():
        out.append(_SECTION.pack(tag, len(body)))
        out.append(body)
    return b"".join(out)


def unpack(raw: bytes, code: int, what: str) -> dict[bytes, bytes]:
    """The sections of ``raw``; ``what`` names the key and method in errors."""
    if len(raw) < _HEAD.size:
        raise StateError(f"decision state of {what}: {len(raw)} bytes, too short")
    magic, got, n = _HEAD.unpack_from(raw)
    if magic != MAGIC or got != code:
        raise StateError(f"decision state of {what}: not this method's state")
    off = _HEAD.size
    out: dict[bytes, bytes] = {}
    for _ in range(n):
        if off + _SECTION.size > len(raw):
            raise StateError(f"decision state of {what}: wrong length {len(raw)}")
        tag, size = _SECTION.unpack_from(raw, off)
        off += _SECTION.size
        if off + size > len(raw):
            raise StateError(f"decision state of {what}: wrong length {len(raw)}")
        out[tag] = raw[off : off + size]
        off += size
    if off != len(raw):
        raise StateError(f"decision state of {what}: wrong length {len(raw)}")
    return out


class Reader:
    """Reads scalars and arrays from one section, refusing a short or long one."""

    def __init__(self, body: bytes, what: str) -> None:
        self.body, self.off, self.what = body, 0, what

    def scalars(self, fmt: str) -> tuple:  # type: ignore[type-arg]
        s = struct.Struct("<" + fmt)
        if self.off + s.size > len(self.body):
            raise StateError(f"decision state of {self.what}: wrong length {len(self.body)}")
        vals = s.unpack_from(self.body, self.off)
        self.off += s.size
        return vals

    def array(self, dtype: type, n: int) -> np.ndarray:
        size = np.dtype(dtype).itemsize * n
        if n < 0 or self.off + size > len(self.body):
            raise StateError(f"decision state of {self.what}: wrong length {len(self.body)}")
        a = np.frombuffer(self.body, dtype, n, self.off).copy()
        self.off += size
        return a

    def rest(self) -> bytes:
        out = self.body[self.off :]
        self.off = len(self.body)
        return out

    def done(self) -> None:
        if self.off != len(self.body):
            raise StateError(f"decision state of {self.what}: wrong length {len(self.body)}")


def scalars(fmt: str, *values: object) -> bytes:
    return struct.pack("<" + fmt, *values)
