"""New order ids: the format clients have always seen, in the order they were made."""

from __future__ import annotations

import re
import time

import pytest

from checkout.participants import new_order_id


def test_an_order_id_is_ord_and_32_hex_digits_unique_within_a_millisecond(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.001)
    ids = [new_order_id() for _ in range(2000)]
    assert all(re.fullmatch(r"ord_[0-9a-f]{32}", one) for one in ids)
    assert len(set(ids)) == len(ids)


def test_a_later_millisecond_sorts_after_every_id_of_an_earlier_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What keeps the B-trees keyed by an order id (and the saga's key) appending at their
    # right edge: an id made later sorts after, whatever its random part.
    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.001)
    earlier = [new_order_id() for _ in range(500)]
    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.002)
    later = [new_order_id() for _ in range(500)]
    assert max(earlier) < min(later)
