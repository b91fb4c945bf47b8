"""``_codec.dumps`` writes what the JSON encoder writes, whichever of its paths takes a value
(an exact int, a flat dict of texts and ints, written by hand; the rest by the encoder)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from sagaway.store._codec import dumps

_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

_TEXT = st.text()
_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), _TEXT)
_VALUE = st.recursive(
    _SCALAR,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=12,
)


@given(st.one_of(_VALUE, st.dictionaries(_TEXT, st.integers() | _TEXT, max_size=6)))
def test_dumps_writes_what_the_encoder_writes(value: Any) -> None:
    assert dumps(value) == _ENCODE(value)


def test_a_dict_with_keys_other_than_text_is_left_to_the_encoder() -> None:
    assert dumps({1: 2, "a": "b"}) == '{"1":2,"a":"b"}'
    assert dumps({"a": True, "b": 2}) == '{"a":true,"b":2}'
