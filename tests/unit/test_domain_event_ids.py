"""``DomainEvent.new``'s ids: unique, and ordered by the millisecond they were made in, so the
receivers' inboxes (keyed by them) append a batch's rows instead of scattering them."""

from __future__ import annotations

import time

from sagaway.choreography import DomainEvent


def _event() -> DomainEvent:
    return DomainEvent.new(
        "placed", {"order_id": "o-1"}, correlation_id="c-1", source="shop", at=0.0
    )


def test_an_event_id_is_32_hex_digits_beginning_with_the_millisecond_it_was_made() -> None:
    before = int(time.time() * 1000)
    made = _event().id
    after = int(time.time() * 1000)
    assert len(made) == 32
    assert int(made, 16) >= 0
    assert before <= int(made[:12], 16) <= after


def test_ids_of_events_made_later_sort_later_and_none_repeat() -> None:
    ids = [_event().id for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    prefixes = [i[:12] for i in ids]
    assert prefixes == sorted(prefixes)
