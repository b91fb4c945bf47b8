"""The reader of a SQLite saga journal's chunks (``_sqlite_compact.journal_rows``).

On its own, interpreted: a subclass of the C ``pickle.Unpickler`` is one class mypyc cannot
compile, and ``_sqlite_compact``, which runs on every write, is compiled (DEVELOPERS.md
"The compiled build").
"""

from __future__ import annotations

import pickle
from typing import Any


class ChunkReader(pickle.Unpickler):
    """Reads a journal's chunks. Loading a pickle calls whatever class or function it names:
    a journal names none (``journal_chunk``), and one that does is refused, so reading a log
    file runs no code chosen by its contents."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"a saga journal may not name {module}.{name}")
