"""``sagaway prune``, ``pin`` and ``unpin``: retention by hand (see :mod:`sagaway.retention`).

Registered on :data:`sagaway.cli.app` when :mod:`sagaway.cli` is imported.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from sagaway import archive
from sagaway.cli import SagaId, StoreOption, _resolve, _run, _store_url, _when, app
from sagaway.engine import Engine
from sagaway.retention import BATCH, prune_finished, pruning_store
from sagaway.state import SagaRecord

# A dry run lists at most this many (a real prune has no limit: it works in batches).
DRY_RUN_LIMIT = 100_000


def parse_date(text: str) -> float:
    """``--finished-before``: an ISO date (midnight UTC) or date and time (UTC unless it
    names an offset), as POSIX seconds. Refuses a time in the future: that would prune every
    finished saga, which is never what a typo in the year meant."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not a date: use 2026-11-01 or 2026-11-01T12:00:00 (UTC), "
            "or give an offset (2026-11-01T12:00:00+01:00)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    at = when.timestamp()
    if at > time.time():
        raise typer.BadParameter(f"{text!r} is in the future: nothing would be left to keep")
    return at


FinishedBefore = Annotated[
    float,
    typer.Option(
        "--finished-before",
        metavar="DATE",
        parser=parse_date,
        help="Prune sagas that finished before this: 2026-11-01 or 2026-11-01T12:00:00 (UTC)",
    ),
]


@app.command()
def prune(
    ctx: typer.Context,
    finished_before: FinishedBefore,
    store: StoreOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be pruned; remove nothing")
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Print the ids, one per line")
    ] = False,
    archive_to: Annotated[
        Path | None,
        typer.Option(
            "--archive",
            metavar="FILE",
            help="Append each saga to FILE (JSON lines) before removing it; read one back "
            "with `sagaway show --archive FILE ID`",
        ),
    ] = None,
    batch: Annotated[int, typer.Option(min=1, max=5000, help="Sagas per delete")] = BATCH,
    pause: Annotated[
        float,
        typer.Option(min=0, max=60, help="Seconds between batches, for the workers' writes"),
    ] = 0.05,
) -> None:
    """Remove finished sagas (SUCCEEDED, COMPENSATED; not pinned) last written before DATE,
    with their steps, history and outbox messages. Running, parked and FAILED sagas are
    never removed. Works in small batches: safe while workers run."""

    async def action(engine: Engine) -> list[str]:
        target = pruning_store(engine.store)
        if dry_run:
            return await target.prunable(finished_before=finished_before, limit=DRY_RUN_LIMIT)

        async def write_out(ids: list[str]) -> None:
            assert archive_to is not None
            loaded = [await target.load(saga_id) for saga_id in ids]
            archive.append(archive_to, [r for r in loaded if r is not None])

        removed, _ = await prune_finished(
            target,
            finished_before=finished_before,
            batch=batch,
            before_delete=None if archive_to is None else write_out,
            pause=pause,
        )
        return removed

    ids = _run(_store_url(ctx, store), action)
    cutoff = _when(finished_before)
    if dry_run:
        more = " (at least)" if len(ids) >= DRY_RUN_LIMIT else ""
        typer.echo(f"would prune {len(ids)}{more} finished saga(s) last written before {cutoff}")
    else:
        where = f", archived to {archive_to}" if archive_to is not None and ids else ""
        typer.echo(f"pruned {len(ids)} finished saga(s) last written before {cutoff}{where}")
    if verbose:
        for saga_id in ids:
            typer.echo(saga_id)


def _set_pinned(ctx: typer.Context, saga_id: str, store: str | None, pinned: bool) -> SagaRecord:
    async def action(engine: Engine) -> SagaRecord:
        target = pruning_store(engine.store)
        return await target.set_pinned(await _resolve(engine, saga_id), pinned)

    return _run(_store_url(ctx, store), action)


@app.command()
def pin(ctx: typer.Context, saga_id: SagaId, store: StoreOption = None) -> None:
    """Pin a saga: retention (automatic or `sagaway prune`) never removes it."""
    record = _set_pinned(ctx, saga_id, store, True)
    typer.echo(f"saga {record.id} pinned ({record.status}): retention keeps it")


@app.command()
def unpin(ctx: typer.Context, saga_id: SagaId, store: StoreOption = None) -> None:
    """Unpin a saga: once finished and old enough, retention removes it."""
    record = _set_pinned(ctx, saga_id, store, False)
    typer.echo(f"saga {record.id} unpinned ({record.status})")
