"""RIPEMD-160 (ISO/IEC 10118-3), the default MAC of DICOM digital signatures.

OpenSSL 3 moved RIPEMD-160 to its "legacy" provider, so ``hashlib.new("ripemd160")`` fails on
systems that do not load it, and `cryptography` has no RIPEMD-160 at all. `new()` returns
hashlib's implementation when there is one and this pure-Python one otherwise; both have the
same ``update``/``digest``/``hexdigest``/``copy`` interface. The pure-Python version hashes about
1 MB/s, which is enough for signing and verifying DICOM objects of a few megabytes.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Protocol

# Message word order, rotations and constants of the left and right lines (the algorithm's
# published tables).
_R_LEFT = (
    list(range(16))
    + [7, 4, 13, 1, 10, 6, 15, 3, 12, 0, 9, 5, 2, 14, 11, 8]
    + [3, 10, 14, 4, 9, 15, 8, 1, 2, 7, 0, 6, 13, 11, 5, 12]
    + [1, 9, 11, 10, 0, 8, 12, 4, 13, 3, 7, 15, 14, 5, 6, 2]
    + [4, 0, 5, 9, 7, 12, 2, 10, 14, 1, 3, 8, 11, 6, 15, 13]
)
_R_RIGHT = (
    [5, 14, 7, 0, 9, 2, 11, 4, 13, 6, 15, 8, 1, 10, 3, 12]
    + [6, 11, 3, 7, 0, 13, 5, 10, 14, 15, 8, 12, 4, 9, 1, 2]
    + [15, 5, 1, 3, 7, 14, 6, 9, 11, 8, 12, 2, 10, 0, 4, 13]
    + [8, 6, 4, 1, 3, 11, 15, 0, 5, 12, 2, 13, 9, 7, 10, 14]
    + [12, 15, 10, 4, 1, 5, 8, 7, 6, 2, 13, 14, 0, 3, 9, 11]
)
_S_LEFT = (
    [11, 14, 15, 12, 5, 8, 7, 9, 11, 13, 14, 15, 6, 7, 9, 8]
    + [7, 6, 8, 13, 11, 9, 7, 15, 7, 12, 15, 9, 11, 7, 13, 12]
    + [11, 13, 6, 7, 14, 9, 13, 15, 14, 8, 13, 6, 5, 12, 7, 5]
    + [11, 12, 14, 15, 14, 15, 9, 8, 9, 14, 5, 6, 8, 6, 5, 12]
    + [9, 15, 5, 11, 6, 8, 13, 12, 5, 12, 13, 14, 11, 8, 5, 6]
)
_S_RIGHT = (
    [8, 9, 9, 11, 13, 15, 15, 5, 7, 7, 8, 11, 14, 14, 12, 6]
    + [9, 13, 15, 7, 12, 8, 9, 11, 7, 7, 12, 7, 6, 15, 13, 11]
    + [9, 7, 15, 11, 8, 6, 6, 14, 12, 13, 5, 14, 13, 13, 7, 5]
    + [15, 5, 8, 11, 14, 14, 6, 14, 6, 9, 12, 9, 12, 5, 15, 8]
    + [8, 5, 12, 9, 12, 5, 14, 6, 8, 13, 6, 5, 15, 13, 11, 11]
)
_K_LEFT = (0x00000000, 0x5A827999, 0x6ED9EBA1, 0x8F1BBCDC, 0xA953FD4E)
_K_RIGHT = (0x50A28BE6, 0x5C4DD124, 0x6D703EF3, 0x7A6D76E9, 0x00000000)
_MASK = 0xFFFFFFFF
_INITIAL = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0)


def _f(round_: int, x: int, y: int, z: int) -> int:
    if round_ == 0:
        return x ^ y ^ z
    if round_ == 1:
        return (x & y) | (~x & z)
    if round_ == 2:
        return (x | ~y) ^ z
    if round_ == 3:
        return (x & z) | (y & ~z)
    return x ^ (y | ~z)


def _rotl(value: int, count: int) -> int:
    value &= _MASK
    return ((value << count) | (value >> (32 - count))) & _MASK


def _compress(state: tuple[int, ...], block: bytes) -> tuple[int, ...]:
    words = struct.unpack("<16I", block)
    al, bl, cl, dl, el = state
    ar, br, cr, dr, er = state
    for j in range(80):
        round_ = j >> 4
        t = _rotl(al + _f(round_, bl, cl, dl) + words[_R_LEFT[j]] + _K_LEFT[round_], _S_LEFT[j])
        t = (t + el) & _MASK
        al, el, dl, cl, bl = el, dl, _rotl(cl, 10), bl, t
        t = _rotl(
            ar + _f(4 - round_, br, cr, dr) + words[_R_RIGHT[j]] + _K_RIGHT[round_], _S_RIGHT[j]
        )
        t = (t + er) & _MASK
        ar, er, dr, cr, br = er, dr, _rotl(cr, 10), br, t
    h0, h1, h2, h3, h4 = state
    return (
        (h1 + cl + dr) & _MASK,
        (h2 + dl + er) & _MASK,
        (h3 + el + ar) & _MASK,
        (h4 + al + br) & _MASK,
        (h0 + bl + cr) & _MASK,
    )


class PureRIPEMD160:
    """RIPEMD-160 in Python, with hashlib's incremental interface."""

    name = "ripemd160"
    digest_size = 20
    block_size = 64

    def __init__(self, data: bytes = b"") -> None:
        self._state: tuple[int, ...] = _INITIAL
        self._buffer = b""
        self._length = 0
        if data:
            self.update(data)

    def update(self, data: bytes) -> None:
        self._length += len(data)
        buffer = self._buffer + bytes(data)
        whole = len(buffer) - len(buffer) % 64
        state = self._state
        for offset in range(0, whole, 64):
            state = _compress(state, buffer[offset : offset + 64])
        self._state = state
        self._buffer = buffer[whole:]

    def copy(self) -> PureRIPEMD160:
        other = PureRIPEMD160()
        other._state, other._buffer, other._length = self._state, self._buffer, self._length
        return other

    def digest(self) -> bytes:
        bit_length = (self._length * 8) & 0xFFFFFFFFFFFFFFFF
        padding = b"\x80" + b"\x00" * ((55 - self._length) % 64) + struct.pack("<Q", bit_length)
        state = self._state
        tail = self._buffer + padding
        for offset in range(0, len(tail), 64):
            state = _compress(state, tail[offset : offset + 64])
        return struct.pack("<5I", *state)

    def hexdigest(self) -> str:
        return self.digest().hex()


class Hasher(Protocol):
    digest_size: int

    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...


def new(data: bytes = b"", *, pure: bool = False) -> Hasher:
    """A RIPEMD-160 hasher: OpenSSL's when available (fast), else the pure-Python one."""
    if not pure:
        try:
            hasher = hashlib.new("ripemd160")
        except ValueError:
            pass
        else:
            hasher.update(data)
            return hasher
    return PureRIPEMD160(data)
