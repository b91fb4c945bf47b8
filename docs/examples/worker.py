"""A worker for first_saga.py's sagas: it resumes and runs them until stopped (Ctrl-C).

Importing the module that declares the saga is what makes the engine resume it: without that
import it would log a WARNING naming the definition ('checkout' version 1) and leave it alone.
"""

import asyncio

import first_saga  # noqa: F401 - declares Saga("checkout", version=1)

from sagaway import Engine


async def main() -> None:
    async with Engine("sqlite:///sagas.db", owner_id="worker-1"):
        await asyncio.Event().wait()  # the engine works in the background until stopped


if __name__ == "__main__":
    asyncio.run(main())
