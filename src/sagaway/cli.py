"""``sagaway``: the admin CLI for any saga log (list, show, retry, cancel, stats, waiting,
signal, dead-letters; prune, pin, unpin in :mod:`sagaway.cli_retention`).

It only reads and flips state in the store; the workers that know the saga definitions do the
work (a retried or cancelled saga is picked up by whichever engine claims it next).

The store comes from ``--store`` (before the command, or after it), else ``SAGAWAY_STORE_URL``,
else ``sqlite:///sagaway.db``. No command ever creates a saga log: a SQLite file that does not
exist is an error. Every command taking an id accepts any unique prefix of it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from sagaway import archive
from sagaway.cli_dead_letters import dead_letters_app
from sagaway.engine import Engine, SignalReceipt
from sagaway.errors import SagaNotFound, SagawayError
from sagaway.state import Phase, SagaRecord, SagaStatus, StepRecord
from sagaway.store import open_store

T = TypeVar("T")

DEFAULT_STORE = "sqlite:///sagaway.db"

app = typer.Typer(help="Inspect and repair sagas in a sagaway saga log.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)
app.add_typer(dead_letters_app, name="dead-letters")

STORE_HELP = "Saga log URL: sqlite:///sagaway.db, postgresql://..., redis://..."
StoreOption = Annotated[
    str | None,
    typer.Option("--store", help=f"{STORE_HELP} (overrides the one given before the command)"),
]
SagaId = Annotated[str, typer.Argument(help="The saga id, or any unique prefix of it")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables")]


@dataclass
class _Settings:
    store: str = DEFAULT_STORE


@app.callback()
def _main(
    ctx: typer.Context,
    store: Annotated[
        str, typer.Option("--store", envvar="SAGAWAY_STORE_URL", help=STORE_HELP)
    ] = DEFAULT_STORE,
) -> None:
    ctx.obj = _Settings(store=store)


def _store_url(ctx: typer.Context, store: str | None) -> str:
    if store is not None:
        return store
    settings = ctx.find_object(_Settings)
    return settings.store if settings is not None else DEFAULT_STORE


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=1)


def _when(at: float | None) -> str:
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")


def _iso(at: float | None) -> str | None:
    return None if at is None else _when(at)


def _run(url: str, action: Callable[[Engine], Awaitable[T]]) -> T:
    """Open an engine that executes nothing, run one admin action, map errors to exit codes.

    A SQLite file that does not exist is refused before anything opens it: opening would
    create an empty saga log and report zero sagas, hiding a wrong path."""
    try:
        store = open_store(url)
    except SagawayError as exc:
        raise _fail(str(exc)) from None
    path = getattr(store, "path", None)
    if url.startswith("sqlite") and isinstance(path, str) and not Path(path).exists():
        raise _fail(f"no saga log at {path!r} (from {url!r}): the file does not exist")

    async def main() -> T:
        async with Engine(store, execute=False, owner_id="sagaway-cli") as engine:
            return await action(engine)

    try:
        return asyncio.run(main())
    except SagawayError as exc:
        raise _fail(str(exc)) from None


async def _resolve(engine: Engine, prefix: str) -> str:
    """The id of the one saga whose id starts with ``prefix`` (an exact id first)."""
    if not prefix:
        raise SagaNotFound(prefix)
    if await engine.store.load(prefix, history=False) is not None:
        return prefix
    matches = await engine.store.find_ids(prefix, limit=5)
    if not matches:
        raise SagaNotFound(prefix)
    if len(matches) > 1:
        shown = ", ".join(matches[:4]) + (", ..." if len(matches) > 4 else "")
        raise SagawayError(f"saga id prefix {prefix!r} is ambiguous: it matches {shown}")
    return matches[0]


def _stalled(saga: SagaRecord, now: float) -> bool:
    """Unfinished and no engine drives it: never claimed, or its lease ran out. Either no
    worker runs, or none knows its definition (a worker logs a warning naming it then)."""
    if not saga.status.is_active:
        return False
    return saga.owner is None or saga.lease_expires_at is None or saga.lease_expires_at < now


def _summary(saga: SagaRecord, now: float) -> dict[str, Any]:
    return {
        "id": saga.id,
        "name": saga.name,
        "version": saga.version,
        "status": saga.status.value,
        "stalled": _stalled(saga, now),
        "idempotency_key": saga.idempotency_key,
        "owner": saga.owner,
        "lease_expires_at": _iso(saga.lease_expires_at),
        "deadline_at": _iso(saga.deadline_at),
        "error": saga.error,
        "waiting_for": saga.waiting_for,
        "parked_until": _iso(saga.parked_until),
        "pinned": saga.pinned,
        "created_at": _iso(saga.created_at),
        "updated_at": _iso(saga.updated_at),
    }


@app.command("list")
def list_sagas(
    ctx: typer.Context,
    store: StoreOption = None,
    status: Annotated[SagaStatus | None, typer.Option(help="Only this status")] = None,
    name: Annotated[str | None, typer.Option(help="Only this saga definition")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    as_json: JsonOption = False,
    waiting: Annotated[
        str | None,
        typer.Option(
            "--waiting",
            metavar="NAME",
            help="Only sagas parked waiting for this: a signal name, 'timer', a waiting_for "
            "prefix ('signal:', 'reply:'), or 'all'",
        ),
    ] = None,
) -> None:
    """List sagas, newest first. Unfinished sagas no engine drives are flagged "stalled"."""
    if waiting is not None:
        _list_waiting(ctx, store, waiting, limit, offset, as_json)
        return
    page = _run(
        _store_url(ctx, store),
        lambda e: e.list_sagas(status=status, name=name, limit=limit, offset=offset),
    )
    now = time.time()
    if as_json:
        sagas = [_summary(saga, now) for saga in page.items]
        typer.echo(json.dumps({"total": page.total, "offset": offset, "sagas": sagas}, indent=2))
        return
    stalled: Counter[str] = Counter()
    rows = []
    for saga in page.items:
        flag = _stalled(saga, now)
        if flag:
            stalled[f"{saga.name} v{saga.version}"] += 1
        rows.append(
            [
                saga.id,
                f"{saga.name} v{saga.version}",
                f"{saga.status} (stalled)"
                if flag
                else f"{saga.status} (pinned)"
                if saga.pinned
                else saga.status.value,
                _when(saga.created_at),
                saga.error or "",
            ]
        )
    typer.echo(f"sagas {offset + 1}-{offset + len(page.items)} of {page.total}, newest first")
    _echo_columns(["ID", "NAME", "STATUS", "CREATED", "ERROR"], rows)
    if stalled:
        which = ", ".join(f"{definition} ({n})" for definition, n in sorted(stalled.items()))
        typer.echo(
            f"stalled: unfinished sagas no engine drives: {which}. Run a worker whose process "
            "declares these definitions (Saga(name, version=...)); a worker that does not know "
            "them logs a warning naming them."
        )


def _waiting_prefix(name: str) -> str:
    """``list --waiting NAME``: a signal's name, or a ``waiting_for`` prefix as is."""
    if name in ("", "all", "*"):
        return ""
    if name == "timer" or ":" in name:
        return name
    return f"signal:{name}"


def _list_waiting(
    ctx: typer.Context, store: str | None, name: str, limit: int, offset: int, as_json: bool
) -> None:
    prefix = _waiting_prefix(name)
    page = _run(
        _store_url(ctx, store),
        lambda e: e.list_waiting(prefix, limit=limit, offset=offset),
    )
    now = time.time()
    if as_json:
        sagas = [_summary(saga, now) for saga in page.items]
        typer.echo(json.dumps({"total": page.total, "offset": offset, "sagas": sagas}, indent=2))
        return
    rows = [
        [
            saga.id,
            f"{saga.name} v{saga.version}",
            saga.waiting_for or "",
            _when(saga.parked_until),
            _when(saga.created_at),
        ]
        for saga in page.items
    ]
    what = f"waiting for {prefix}*" if prefix else "waiting"
    typer.echo(
        f"sagas {what}: {offset + 1}-{offset + len(page.items)} of {page.total}, soonest due first"
    )
    _echo_columns(["ID", "NAME", "WAITING FOR", "DUE", "CREATED"], rows)


@app.command()
def waiting(
    ctx: typer.Context,
    name: Annotated[
        str, typer.Argument(help="A signal name, 'timer', or a waiting_for prefix; all if none")
    ] = "",
    store: StoreOption = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    as_json: JsonOption = False,
) -> None:
    """The inbox: parked sagas by what they wait for (a signal, a timer, a reply), soonest
    due first. Same as ``list --waiting NAME``."""
    _list_waiting(ctx, store, name, limit, offset, as_json)


@app.command()
def signal(
    ctx: typer.Context,
    saga_id: SagaId,
    name: Annotated[str, typer.Argument(help="The signal the saga waits for")],
    payload: Annotated[
        str | None, typer.Option("--payload", metavar="JSON", help="The signal's payload")
    ] = None,
    signal_id: Annotated[
        str | None,
        typer.Option("--signal-id", help="Dedupes deliveries: the same id twice counts once"),
    ] = None,
    error: Annotated[
        str | None,
        typer.Option("--error", help="Fail the wait with this reason (the saga compensates)"),
    ] = None,
    store: StoreOption = None,
) -> None:
    """Deliver a signal to a saga waiting for it. Recorded durably in its log; the worker
    that runs the saga applies it (within a second). Refused (exit 1, with the reason: what
    the saga waits for) when it does not wait for this signal."""
    try:
        data = None if payload is None else json.loads(payload)
    except json.JSONDecodeError as exc:
        raise _fail(f"--payload is not JSON: {exc}") from None

    async def action(engine: Engine) -> SignalReceipt:
        full_id = await _resolve(engine, saga_id)
        return await engine.signal(full_id, name, data, signal_id=signal_id, error=error)

    receipt = _run(_store_url(ctx, store), action)
    if receipt.duplicate:
        typer.echo(
            f"signal {name} (id {receipt.signal_id}) was already delivered to saga "
            f"{receipt.saga_id}: nothing changed"
        )
    else:
        typer.echo(
            f"signal {name} (id {receipt.signal_id}) recorded for saga {receipt.saga_id}; "
            "its worker applies it"
        )


def _echo_columns(headers: list[str], rows: list[list[str]], indent: str = "") -> None:
    """Plain aligned columns, one line per row, never cut or wrapped by us: ids and timestamps
    stay whole at any terminal width, ready to copy, grep or cut."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    for row in [headers, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        typer.echo((indent + "  ".join(cells)).rstrip())


def _run_order(record: SagaRecord) -> list[StepRecord]:
    """Step rows in the order they ran: by start time; forward before compensation."""
    phase_rank = {Phase.FORWARD: 0, Phase.COMPENSATION: 1}
    rows = list(record.steps.values())
    return sorted(
        rows,
        key=lambda row: (
            row.started_at if row.started_at is not None else float("inf"),
            phase_rank.get(row.phase, 2),
        ),
    )


def _detail(record: SagaRecord) -> dict[str, Any]:
    return {
        **_summary(record, time.time()),
        "input": record.input,
        "cancel_requested": record.cancel_requested,
        "steps": [
            {
                "name": row.name,
                "phase": row.phase.value,
                "status": row.status.value,
                "attempts": row.attempts,
                "output": row.output,
                "error": row.error,
                "uncertain": row.uncertain,
                "started_at": _iso(row.started_at),
                "finished_at": _iso(row.finished_at),
            }
            for row in _run_order(record)
        ],
        "history": [
            {
                "at": _iso(event.at),
                "type": event.type.value,
                "step": event.step,
                "phase": None if event.phase is None else event.phase.value,
                "attempt": event.attempt,
                "detail": event.detail,
            }
            for event in record.history
        ],
    }


def _print_saga(record: SagaRecord) -> None:
    typer.echo(
        f"{record.id} {record.name} v{record.version} {record.status}"
        + (f"  error: {record.error}" if record.error else "")
    )
    typer.echo(f"input: {json.dumps(record.input)}")
    if record.pinned:
        typer.echo("pinned: retention never removes it (sagaway unpin to undo)")
    if record.waiting_for is not None:
        typer.echo(f"waiting for {record.waiting_for} until {_when(record.parked_until)}")
    typer.echo("steps, in the order they ran:")
    _echo_columns(
        ["STEP", "PHASE", "STATUS", "ATTEMPTS", "STARTED", "FINISHED", "ERROR"],
        [
            [
                row.name,
                row.phase.value,
                row.status.value,
                str(row.attempts),
                _when(row.started_at),
                _when(row.finished_at),
                row.error or "",
            ]
            for row in _run_order(record)
        ],
        indent="  ",
    )
    typer.echo("history:")
    _echo_columns(
        ["AT", "EVENT", "STEP", "ATTEMPT", "DETAIL"],
        [
            [
                _when(event.at),
                event.type.value,
                event.step or "",
                "" if event.attempt is None else str(event.attempt),
                event.detail or "",
            ]
            for event in record.history
        ],
        indent="  ",
    )


@app.command()
def show(
    ctx: typer.Context,
    saga_id: SagaId,
    store: StoreOption = None,
    as_json: JsonOption = False,
    archived: Annotated[
        Path | None,
        typer.Option(
            "--archive",
            metavar="FILE",
            help="Read the saga from an archive `sagaway prune --archive` wrote, not the log",
        ),
    ] = None,
) -> None:
    """Show one saga: its steps, in the order they ran, and its history."""

    async def action(engine: Engine) -> SagaRecord:
        return await engine.get(await _resolve(engine, saga_id))

    if archived is not None:
        try:
            record = archive.find(archived, saga_id)
        except SagawayError as exc:
            raise _fail(str(exc)) from None
    else:
        record = _run(_store_url(ctx, store), action)
    if as_json:
        typer.echo(json.dumps(_detail(record), indent=2))
    else:
        _print_saga(record)


@app.command()
def retry(ctx: typer.Context, saga_id: SagaId, store: StoreOption = None) -> None:
    """Retry a FAILED saga (its failed compensation, or its failed step past the pivot)."""

    async def action(engine: Engine) -> str:
        full_id = await _resolve(engine, saga_id)
        await engine.retry(full_id)
        return full_id

    full_id = _run(_store_url(ctx, store), action)
    typer.echo(f"saga {full_id} handed back to the workers for a retry")


@app.command()
def cancel(ctx: typer.Context, saga_id: SagaId, store: StoreOption = None) -> None:
    """Cancel a saga: it stops before its next step and compensates. Refused (exit 1, with
    the reason, recorded in its history) when it would not take effect: finished, already
    compensating, or its last cancellable step has started. Without the saga's definition
    in this process only a saga that has not started a step can be cancelled."""

    async def action(engine: Engine) -> SagaRecord:
        return await engine.cancel(await _resolve(engine, saga_id))

    record = _run(_store_url(ctx, store), action)
    typer.echo(
        f"saga {record.id} will be cancelled: it stops before its next step and compensates "
        f"(status {record.status})"
    )


@app.command()
def stats(ctx: typer.Context, store: StoreOption = None) -> None:
    """How many sagas are in each status."""
    counts = _run(_store_url(ctx, store), lambda e: e.store.counts())
    table = Table(title="sagas by status")
    table.add_column("status")
    table.add_column("count", justify="right")
    for status in SagaStatus:
        table.add_row(status, str(counts.get(status, 0)))
    console.print(table)


def main() -> None:
    app()


# The retention commands register themselves on ``app`` (a module of their own for size).
from sagaway import cli_retention as _cli_retention  # noqa: E402, F401
