"""Token ids as packed bytes (native uint32, 4 bytes per token).

The global mirror stores cached token runs this way: a prompt is compared with a run
without a Python compare per token, and a cached token costs 4 bytes instead of a
pointer plus an int object. The functions here are the compiled `sglang_ext._tokens`
when the package was built with a C compiler, else pure-Python equivalents (same
results, several times slower on long prompts).

`ids` may be a list or tuple of ints, or any one-dimensional buffer of integers: SGLang
0.5.23 hands the controller `input_ids` as `array('q')` (its
`srt/managers/tokenizer_manager.py` builds `array("q", input_ids)`), which the
compiled helpers read in place through the buffer protocol (copying it into a list
first cost more than the match itself).

- `pack(ids, start=0, stop=len(ids)) -> bytes`
- `common_prefix(ids, start, packed) -> int`: how many tokens of ids[start:] equal the
  packed tokens, counted up to the first difference.

- `packed_common_prefix(a, start, b) -> int`: how many tokens of packed a[start:]
  (`start` in tokens) equal packed b's, up to the first difference (a memcmp: a
  prompt packed once per request is then matched against several trees cheaply).

- `spread(levels, n, floor=None) -> list[int]`: `levels` are disjoint (worker bitmask,
  value) pairs; item w is the value of the level whose mask has bit w, else 0; with a
  `floor` list of n ints, the larger of that and floor[w].

`pack` and `common_prefix` raise OverflowError for ids outside [0, 2**32) and TypeError for non-integers (in
`common_prefix`: only for ids it reaches before the first difference).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

TOKEN_BYTES = 4
if array("I").itemsize != TOKEN_BYTES:  # pragma: no cover - every platform we target
    raise ImportError("sglang_ext.core.token_bytes needs a 4-byte C unsigned int")


def _pack_array(ids: Sequence[int], start: int = 0, stop: int | None = None) -> bytes:
    return array("I", ids[start:stop]).tobytes()


def _common_prefix_array(ids: Sequence[int], start: int, packed: bytes | bytearray) -> int:
    n = min(len(ids) - start, len(packed) // TOKEN_BYTES)
    lo, hi = 0, n  # invariant: the first `lo` tokens are equal
    while lo < hi:  # binary search over memcmp of packed windows
        mid = (lo + hi + 1) // 2
        mine = array("I", ids[start + lo : start + mid]).tobytes()
        if mine == packed[lo * TOKEN_BYTES : mid * TOKEN_BYTES]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _packed_common_prefix_python(a: bytes | bytearray, start: int, b: bytes | bytearray) -> int:
    off = start * TOKEN_BYTES
    n = max(0, min(len(a) - off, len(b))) // TOKEN_BYTES
    lo, hi = 0, n  # invariant: the first `lo` tokens are equal
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[off + lo * TOKEN_BYTES : off + mid * TOKEN_BYTES] == b[lo * TOKEN_BYTES : mid * TOKEN_BYTES]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _spread_python(levels: list[tuple[int, int]], n: int, floor: list[int] | None = None) -> list[int]:
    out = [0] * n if floor is None else list(floor)
    for mask, value in levels:
        while mask:
            low = mask & -mask
            w = low.bit_length() - 1
            if floor is None or value > out[w]:
                out[w] = value
            mask ^= low
    return out


try:
    from sglang_ext._tokens import common_prefix, packed_common_prefix, pack_u32 as pack, spread
    COMPILED = True
except ImportError:  # built without a C compiler
    pack, common_prefix, spread = _pack_array, _common_prefix_array, _spread_python
    packed_common_prefix = _packed_common_prefix_python
    COMPILED = False


def unpack(data: bytes | bytearray) -> list[int]:
    """The token ids of packed bytes."""
    out = array("I")
    out.frombytes(data)
    return out.tolist()
