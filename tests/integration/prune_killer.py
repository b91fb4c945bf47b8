"""Child process of ``test_prune_crash.py``: ``sagaway prune --archive``'s loop on STORE_URL,
batches of 10, which announces on stdout that its second batch is archived (fsynced) but not
yet deleted, and waits there to be killed."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from sagaway import archive
from sagaway.retention import prune_finished, pruning_store
from sagaway.store import open_store

CUTOFF = 1_000_000.0 + 100


async def main(url: str, archive_path: Path) -> None:
    async with open_store(url) as opened:
        store = pruning_store(opened)
        batches = 0

        async def write_out(ids: list[str]) -> None:
            nonlocal batches
            loaded = [await store.load(i) for i in ids]
            archive.append(archive_path, [r for r in loaded if r is not None])
            batches += 1
            if batches == 2:
                print("ARCHIVED", " ".join(ids), flush=True)
                await asyncio.Event().wait()  # held here until the parent kills us

        await prune_finished(store, finished_before=CUTOFF, batch=10, before_delete=write_out)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2])))
