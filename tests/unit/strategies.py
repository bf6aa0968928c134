"""Hypothesis strategies shared by the protocol unit tests."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import strategies as st

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=INT64_MIN, max_value=INT64_MAX)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
)

#: Anything msgpack round-trips exactly (with use_bin_type=True, raw=False, use_list=True).
msgpack_values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(), children, max_size=6),
    max_leaves=25,
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` cut at the given offsets (any order, duplicates allowed: empty chunks are fed too)."""
    points = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


def chunked(data: st.DataObject, stream: bytes) -> list[bytes]:
    """Draw an arbitrary chunking of `stream`."""
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=12), label="cuts")
    chunks = split(stream, cuts)
    assert b"".join(chunks) == stream
    return chunks
