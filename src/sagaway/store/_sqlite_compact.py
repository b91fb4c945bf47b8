"""The SQLite saga log's journal and compaction: a saga's step rows and events on its own row.

While a saga runs, each write appends what it records (its step rows and events, as one JSON
chunk) to the ``journal`` column of the saga's instance row, in the very UPDATE (or INSERT) that
changes the row (schema v11). One statement per transition: the store used to upsert each step
row and insert each event into ``sagaway_steps`` and ``sagaway_events`` (about 6 and 8 rows for
a three-step saga, each with an index entry) only to read them back and delete them when the
saga finished; those statements were most of the writer's time.

When a commit finishes a saga (SUCCEEDED, COMPENSATED or FAILED), :func:`compact` runs in the
same transaction: it reads the journal, writes it as one packed value (``store._packed``) in
the row's ``packed`` column and clears the journal. In the same transaction, so there is no
state in which a saga is half compacted, and nothing to recover after a crash. A saga this
store created and ran needs no compaction: its finishing commit packs the rows the store kept
(:class:`Journals`) and writes the value in its own UPDATE, fenced on the journal being the
text those rows were written as (``Journals.packed``).

Readers put a saga back together from three forms, oldest first: the packed value, rows in
``sagaway_steps``/``sagaway_events`` (written by versions before 11: still read and compacted,
never written), then the journal; a later step row replaces an earlier one of the same (name,
phase), events follow in order. A saga finishing again (an operator's retry of a FAILED saga,
a refused cancel's event on a finished one) is compacted again, folding all into one value.
Retention deletes the instance row and its rows, packed or not.
"""

from __future__ import annotations

import io
import pickle
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, Final

from sagaway.state import SagaStatus
from sagaway.store._codec import dumps, loads
from sagaway.store._packed import merge_steps, pack, shareable, unpack
from sagaway.store._sqlite_chunks import ChunkReader

# What a commit compacts on: the statuses in which no engine runs the saga any more.
FINISHED: Final = frozenset({SagaStatus.SUCCEEDED, SagaStatus.COMPENSATED, SagaStatus.FAILED})

STEP_COLS = "name, phase, status, attempts, output, error, uncertain, started_at, finished_at"
EVENT_COLS = "at, type, step, phase, attempt, detail"
# The SET term that appends a chunk to a saga's journal (NULL once compacted, or before v12).
# ``||`` makes text of blobs, byte for byte in a UTF-8 database: the CAST makes it a blob again.
APPEND_JOURNAL: Final = "chunks = CAST(coalesce(chunks, x'') || ? AS BLOB)"
# Chunks are pickles of plain tuples, lists, strings, numbers and None: a pickle is built and
# read by C code, with times as exact 8-byte floats (the JSON of v11, its times as integer
# ticks, cost 2.5 times as much to write and to read). Protocol 5 is fixed, not the newest.
_PROTOCOL: Final = 5
# The opcode that names a class or function, which a pickle of anything but the plain types
# holds; the byte may also be part of a text or a float (then the chunk is built again). An
# int, not b"\x93": ``bytes in bytes`` first tries the operand as an int and builds (and
# clears) a TypeError, ~1.5k instructions a chunk; an int is one memchr.
_STACK_GLOBAL: Final = 0x93
# Compiled, ``pickle.dumps`` is an attribute lookup on the module at every call; this is not.
_pickle: Final = pickle.dumps


def journal_chunk(steps: Sequence[Sequence[Any]], events: Sequence[Sequence[Any]]) -> bytes:
    """One write's step rows and events (as the tables hold them, without ``saga_id``; enum
    values as their plain text) as the bytes appended to the saga's journal (``chunks``)."""
    chunk = _pickle((steps, events), _PROTOCOL)
    # Mostly the byte is part of a time (1 chunk in ~40): the rows are then all plain values,
    # which pickle as no class, and the chunk stands; only a chunk holding a value of another
    # type (an enum member) is built again. Checking the types is a fraction of ``_plain``
    # and a second pickle (~26k instructions compiled, ~2.5k a saga).
    if _STACK_GLOBAL in chunk and not (_plain_rows(steps) and _plain_rows(events)):
        chunk = _pickle(_plain((steps, events)), _PROTOCOL)
    return chunk


def _plain_rows(rows: Sequence[Sequence[Any]]) -> bool:
    """Whether ``rows`` is a list or tuple of lists or tuples of None, bool, and exact str,
    int and float values only: what pickles without naming a class."""
    kind = type(rows)
    if kind is not list and kind is not tuple:
        return False
    for row in rows:
        kind = type(row)
        if kind is not tuple and kind is not list:
            return False
        for value in row:
            kind = type(value)
            if not (value is None or kind is str or kind is float or kind is int or kind is bool):
                return False
    return True


def _plain(value: Any) -> Any:
    """``value`` with a text or number of a subclass (an enum member) as the plain value it
    is, so that its pickle names no class; anything else than those, None and containers of
    them is refused (TypeError) when written, rather than being unreadable later."""
    kind = type(value)
    if kind is tuple or kind is list:
        return kind(map(_plain, value))
    if value is None or kind in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__index__(value)
    if isinstance(value, float):
        return float.__float__(value)
    raise TypeError(f"a saga journal holds no {kind.__name__} value")


# A time in a v11 journal (JSON text): a whole number of ticks (2**-22 s) when it was one.
_TICKS = 4194304.0


def _untick(value: float | int | None) -> float | None:
    return value / _TICKS if type(value) is int else value


class Journals:
    """The journals this store wrote for the sagas it created, as bytes and as rows, so that
    compacting such a saga packs the rows it already has instead of decoding the journal (the
    decoding was a third of compaction's cost), and its finishing commit can pack it itself.

    Self-checking: an entry is used only if its bytes are the row's journal, byte for byte;
    anything else (another process's write, a claim, a batch rolled back after the entry was
    added) makes them differ, and the row's journal is decoded as it would be without this.
    Entries go when their saga is compacted; sagas that never finish here (taken over, parked
    for long) are dropped all at once past ``limit`` entries.
    """

    __slots__ = ("entries", "fresh", "limit", "numbers")

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        # saga id -> (the chunks written, its step rows by (name, phase), its events, its
        # created_at: the base of its packed times)
        self.entries: dict[
            str,
            tuple[list[bytes], dict[tuple[str, str], Sequence[Any]], list[Sequence[Any]], float],
        ] = {}
        # sagaway_texts numbers known committed (a number never changes once committed), and
        # those the open transaction read, which a rollback could take back (see settle).
        self.numbers: dict[str, int] = {}
        self.fresh: dict[str, int] = {}

    def start(
        self,
        saga_id: str,
        created_at: float,
        chunk: bytes,
        steps: list[tuple[Any, ...]],
        events: list[tuple[Any, ...]],
    ) -> None:
        if len(self.entries) >= self.limit:
            self.entries.clear()
        self.entries[saga_id] = (
            [chunk],
            {(r[0], r[1]): r for r in steps},
            list(events),
            created_at,
        )

    def add(
        self,
        saga_id: str,
        chunk: bytes,
        steps: list[tuple[Any, ...]],
        events: list[tuple[Any, ...]],
    ) -> None:
        entry = self.entries.get(saga_id)
        if entry is not None:
            entry[0].append(chunk)
            for r in steps:
                entry[1][(r[0], r[1])] = r
            entry[2].extend(events)

    def take(
        self, saga_id: str, journal: bytes
    ) -> tuple[list[Sequence[Any]], list[Sequence[Any]]] | None:
        """The rows of ``journal`` if they are the ones written here (see the class)."""
        entry = self.entries.pop(saga_id, None)
        if entry is None or b"".join(entry[0]) != journal:
            return None
        steps = entry[1]
        return [steps[key] for key in sorted(steps)], entry[2]

    def packed(
        self,
        saga_id: str,
        steps: list[tuple[Any, ...]],
        events: list[tuple[Any, ...]],
    ) -> tuple[bytes, bytes] | None:
        """For a commit that finishes a saga created here: the journal its row must hold (the
        commit's fence: anything else means the rows here are not the saga's) and the packed
        value of that journal followed by the commit's rows; None when unknown, or when a text
        it shares has no committed number yet (compaction then numbers it)."""
        entry = self.entries.get(saga_id)
        if entry is None:
            return None
        by_key = dict(entry[1])
        for r in steps:
            by_key[(r[0], r[1])] = r
        all_events = [*entry[2], *events]
        rows = [by_key[key] for key in sorted(by_key)]
        unnumbered: list[str] = []
        value = pack(entry[3], rows, all_events, self.numbers, unnumbered)
        # Most sagas write no text out (no error, no signal): then none is a shareable one.
        if unnumbered and not shareable(rows, all_events).isdisjoint(unnumbered):
            return None
        del self.entries[saga_id]
        return b"".join(entry[0]), value

    def settle(self) -> None:
        """The transaction committed: the numbers it read are there for good."""
        if self.fresh:
            self.numbers.update(self.fresh)
            self.fresh.clear()


def journal_rows(
    journal: str | None, chunks: bytes | None = None
) -> tuple[list[Sequence[Any]], list[Sequence[Any]]]:
    """The step rows (one per (name, phase), the last written, in primary-key order as the
    step table returned them) and the events (in order) of a saga's journal: the JSON text a
    v11 store wrote (``journal``), then the chunks written since (``chunks``)."""
    if not journal and not chunks:
        return [], []
    steps: dict[tuple[str, str], Sequence[Any]] = {}
    events: list[Sequence[Any]] = []
    if journal:
        for chunk_steps, chunk_events in loads("[" + journal[1:] + "]"):
            for row in chunk_steps:
                row[7] = _untick(row[7])
                row[8] = _untick(row[8])
                steps[(row[0], row[1])] = row
            for row in chunk_events:
                row[0] = _untick(row[0])
            events += chunk_events
    if chunks:
        stream, end = io.BytesIO(chunks), len(chunks)
        while stream.tell() < end:
            # A reader per chunk: one keeps its memo from the last load, which the next
            # chunk's back-references (numbered from 0 in each) would resolve against.
            chunk_steps, chunk_events = ChunkReader(stream).load()
            for row in chunk_steps:
                steps[(row[0], row[1])] = row
            events += chunk_events
    return [steps[key] for key in sorted(steps)], events


def compact(
    conn: sqlite3.Connection,
    ids: Sequence[str],
    unwritten_steps: Sequence[Sequence[Any]] = (),
    unwritten_events: Sequence[Sequence[Any]] = (),
    journals: Journals | None = None,
) -> None:
    """Fold the journals (and any step rows and events in the tables) of the sagas ``ids`` into
    their ``packed`` values (inside the caller's transaction; ids of sagas that are gone are
    ignored).

    ``unwritten_steps`` and ``unwritten_events`` are rows of these sagas (``saga_id`` first)
    that the transaction has not written yet, in the order it would write them: they are
    packed as if written (a step row upserted over the stored one, events after the stored
    ones) without ever being inserted. ``journals``: the rows this store wrote, if known."""
    param = (dumps(list(ids)),)
    sagas: dict[str, tuple[float, bytes | None]] = {}
    steps: dict[str, list[Sequence[Any]]] = {}
    events: dict[str, list[Sequence[Any]]] = {}
    texts_of: dict[str, tuple[str | None, bytes | None]] = {}
    rows_of: dict[str, tuple[list[Sequence[Any]], list[Sequence[Any]]]] = {}
    for saga_id, created_at, packed, journal, chunks in conn.execute(
        "SELECT id, created_at, packed, journal, chunks FROM sagaway_instances "
        "WHERE id IN (SELECT value FROM json_each(?))",
        param,
    ):
        sagas[saga_id] = (created_at, packed)
        steps[saga_id], events[saga_id] = [], []
        if journal or chunks:
            known = None
            if journals is not None and chunks and not journal:
                known = journals.take(saga_id, chunks)
            if known is None:
                texts_of[saga_id] = (journal, chunks)
            else:
                rows_of[saga_id] = known
    for row in conn.execute(
        f"SELECT saga_id, {STEP_COLS} FROM sagaway_steps "
        "WHERE saga_id IN (SELECT value FROM json_each(?))",
        param,
    ):
        steps[row[0]].append(row[1:])
    # By saga, then id: the index on saga_id ends with the rowid, which is history order.
    for row in conn.execute(
        f"SELECT saga_id, {EVENT_COLS} FROM sagaway_events "
        "WHERE saga_id IN (SELECT value FROM json_each(?)) ORDER BY saga_id, id",
        param,
    ):
        events[row[0]].append(row[1:])
    for saga_id, (journal, chunks) in texts_of.items():
        rows_of[saga_id] = journal_rows(journal, chunks)
    for saga_id, (journal_steps, journal_events) in rows_of.items():
        steps[saga_id] = table_then_journal_steps(steps[saga_id], journal_steps)
        events[saga_id] += journal_events
    if unwritten_steps:
        late_steps: dict[str, list[Sequence[Any]]] = {}
        for row in unwritten_steps:
            if row[0] in steps:
                late_steps.setdefault(row[0], []).append(row[1:])
        for saga_id, rows in late_steps.items():
            # The order the table keeps them in: its primary key (name, phase).
            steps[saga_id] = sorted(merge_steps(steps[saga_id], rows), key=_step_key)
    for row in unwritten_events:
        if row[0] in events:
            events[row[0]].append(row[1:])
    texts: set[str] = set()
    for saga_id, (created_at, packed) in sagas.items():
        if packed is not None:
            old_steps, old_events = unpack(created_at, packed, _resolver(conn))
            steps[saga_id] = merge_steps(old_steps, steps[saga_id])
            events[saga_id] = [*old_events, *events[saga_id]]
        texts |= shareable(steps[saga_id], events[saga_id])
    shared = _intern(conn, texts)
    if journals is not None:
        journals.fresh.update(shared)
    values = [
        (pack(created_at, steps[saga_id], events[saga_id], shared), saga_id)
        for saga_id, (created_at, _) in sagas.items()
    ]
    conn.executemany(
        "UPDATE sagaway_instances SET packed = ?, journal = NULL, chunks = NULL WHERE id = ?",
        values,
    )
    conn.execute(
        "DELETE FROM sagaway_steps WHERE saga_id IN (SELECT value FROM json_each(?))", param
    )
    conn.execute(
        "DELETE FROM sagaway_events WHERE saga_id IN (SELECT value FROM json_each(?))", param
    )


def table_then_journal_steps(
    rows: list[Sequence[Any]], later: list[Sequence[Any]]
) -> list[Sequence[Any]]:
    """Step rows from the tables with the journal's after them, in the tables' order."""
    return sorted(merge_steps(rows, later), key=_step_key) if rows else later


def _step_key(row: Sequence[Any]) -> tuple[str, str]:
    return (row[0], row[1])


def _intern(conn: sqlite3.Connection, texts: set[str]) -> dict[str, int]:
    """The numbers of ``texts`` in sagaway_texts, adding those not there yet. A number is
    never reused or changed (rows are only added), so packed values can refer to it."""
    if not texts:
        return {}
    param = (dumps(sorted(texts)),)
    conn.execute(
        "INSERT INTO sagaway_texts (text) SELECT value FROM json_each(?) WHERE true "
        "ON CONFLICT (text) DO NOTHING",
        param,
    )
    return dict(
        conn.execute(
            "SELECT text, id FROM sagaway_texts WHERE text IN (SELECT value FROM json_each(?))",
            param,
        ).fetchall()
    )


def _resolver(conn: sqlite3.Connection) -> Callable[[list[int]], dict[int, str]]:
    def resolve(numbers: list[int]) -> dict[int, str]:
        return dict(
            conn.execute(
                "SELECT id, text FROM sagaway_texts WHERE id IN (SELECT value FROM json_each(?))",
                (dumps(numbers),),
            ).fetchall()
        )

    return resolve


def read_rows(
    conn: sqlite3.Connection,
    saga_id: str,
    created_at: float,
    packed: bytes | None,
    journal: str | None,
    chunks: bytes | None,
    history: bool,
) -> tuple[list[Sequence[Any]], list[Sequence[Any]]]:
    """A saga's step rows and (with ``history``) its events in order, packed or not."""
    steps: list[Sequence[Any]] = conn.execute(
        f"SELECT {STEP_COLS} FROM sagaway_steps WHERE saga_id = ?", (saga_id,)
    ).fetchall()
    events: list[Sequence[Any]] = []
    if history:
        events = conn.execute(
            f"SELECT {EVENT_COLS} FROM sagaway_events WHERE saga_id = ? ORDER BY id", (saga_id,)
        ).fetchall()
    if journal or chunks:
        journal_steps, journal_events = journal_rows(journal, chunks)
        steps = table_then_journal_steps(steps, journal_steps)
        if history:
            events += journal_events
    if packed is None:
        return steps, events
    packed_steps, packed_events = unpack(created_at, packed, _resolver(conn))
    return merge_steps(packed_steps, steps), [*packed_events, *events] if history else []
