"""A participant process the group-commit crash test SIGKILLs: the contract's bank participant
on a SQLite file handles one batch of commands (all queued before its transaction starts).

    python participant_batch_child.py SQLITE_URL mid-batch     # killed inside the transaction
    python participant_batch_child.py SQLITE_URL after-commit  # killed once all are answered

``mid-batch`` adds a ``boom`` command at the end of the batch whose handler prints how many
effects its transaction holds so far, then kills the process before the COMMIT.
``after-commit`` prints ``committed N`` once every command's reply is in, then dies before any
reply could leave the process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

from batch_commands import batch_commands
from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from sagaway.testing.transport_contract import EFFECTS, Bank, bank_participant


def main() -> None:
    database, mode = sys.argv[1:3]
    bank = Bank(bank_participant(database))
    commands = batch_commands(bank)

    @bank.participant.handler("boom")
    def boom(conn: Connection, payload: Any) -> None:
        held = conn.execute(select(func.count()).select_from(EFFECTS)).scalar_one()
        print(f"in-transaction effects {held}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    if mode == "mid-batch":
        commands.append(bank.command("boom", {}, step="boom"))

    async def run() -> None:
        replies = await asyncio.gather(*(bank.participant.handle(c) for c in commands))
        print(f"committed {len(replies)}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(run())


if __name__ == "__main__":
    main()
