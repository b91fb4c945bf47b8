"""Saga ids: time-ordered, random, never handed out twice (threads, forked children)."""

import os
import sys

import pytest

from sagaway.state import new_saga_id


def test_ids_are_32_hex_characters_time_first_and_unique() -> None:
    ids = [new_saga_id(1_700_000_000.0 + i / 1000) for i in range(5000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert ids == sorted(ids), "the millisecond prefix orders them"


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="needs fork")
def test_a_forked_child_does_not_repeat_its_parents_next_ids() -> None:
    new_saga_id(1.0)  # the parent now holds a pool of random tails
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        try:
            os.write(write, "".join(new_saga_id(1.0) for _ in range(8)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    child = {text[i : i + 32] for i in range(0, len(text), 32)}
    parent = {new_saga_id(1.0) for _ in range(8)}
    assert len(child) == 8
    assert not child & parent
