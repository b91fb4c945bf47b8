"""``sagaway dead-letters``: list, replay and discard the RabbitMQ transport's dead letters.

Replaying is the repair after the cause is mended (a handler deployed, a database back): each
copy keeps its message id, so the participant's inbox and the engine dedupe it like any
redelivery. Needs the ``rabbitmq`` extra.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from sagaway.transport.dead_letters import DeadLetter, DeadLetters

T = TypeVar("T")

dead_letters_app = typer.Typer(
    help="The RabbitMQ dead-letter queue: list, replay or discard messages.",
    no_args_is_help=True,
)
console = Console()
err = Console(stderr=True)

UrlOption = Annotated[
    str,
    typer.Option(
        "--amqp", envvar="SAGAWAY_RABBITMQ_URL", help="The broker: amqp://user:pass@host/vhost"
    ),
]
Ids = Annotated[list[str] | None, typer.Argument(help="Message ids, as `list` shows them")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]


def _queue(url: str) -> DeadLetters:
    try:
        from sagaway.transport.dead_letters import DeadLetters
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        err.print(f"[red]error:[/red] needs the rabbitmq extra (aio-pika): {exc}")
        raise typer.Exit(code=2) from exc
    return DeadLetters(url)


def _run(action: Coroutine[Any, Any, T]) -> T:
    from sagaway.transport.base import TransportError

    try:
        return asyncio.run(action)
    except TransportError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from exc


def _print(letters: list[DeadLetter], as_json: bool, title: str) -> None:
    if as_json:
        from sagaway.transport.dead_letters import to_json

        typer.echo(to_json(letters))
        return
    table = Table(title=title)
    for column in ("message id", "routing key", "died in", "reason", "replays", "died at", "body"):
        table.add_column(column, overflow="fold")
    for letter in letters:
        died = letter.died_at.isoformat(timespec="seconds") if letter.died_at else "-"
        table.add_row(
            letter.message_id,
            letter.routing_key,
            letter.queue,
            letter.reason,
            str(letter.replays),
            died,
            letter.preview,
        )
    console.print(table)


@dead_letters_app.command("list")
def list_letters(
    amqp: UrlOption = "amqp://guest:guest@127.0.0.1/",
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many")] = 100,
    as_json: JsonOption = False,
) -> None:
    """Show the dead letters, oldest first (the queue is left as it was)."""
    letters = _run(_queue(amqp).peek(limit))
    _print(letters, as_json, f"{len(letters)} dead letters")


@dead_letters_app.command()
def replay(
    ids: Ids = None,
    all_: Annotated[bool, typer.Option("--all", help="Replay every dead letter")] = False,
    amqp: UrlOption = "amqp://guest:guest@127.0.0.1/",
    as_json: JsonOption = False,
) -> None:
    """Publish dead letters again to the exchange and topic they first had."""
    if bool(ids) == all_:
        err.print("[red]error:[/red] name message ids, or give --all (not both)")
        raise typer.Exit(code=2)
    letters = _run(_queue(amqp).replay(None if all_ else set(ids or ())))
    _missing(ids, letters)
    _print(letters, as_json, f"replayed {len(letters)}")


@dead_letters_app.command()
def discard(
    ids: Annotated[list[str], typer.Argument(help="Message ids, as `list` shows them")],
    amqp: UrlOption = "amqp://guest:guest@127.0.0.1/",
    as_json: JsonOption = False,
) -> None:
    """Remove dead letters for good."""
    letters = _run(_queue(amqp).discard(set(ids)))
    _missing(ids, letters)
    _print(letters, as_json, f"discarded {len(letters)}")


def _missing(ids: list[str] | None, done: list[DeadLetter]) -> None:
    missing = sorted(set(ids or ()) - {letter.message_id for letter in done})
    if missing:
        err.print(f"[yellow]not in the dead-letter queue:[/yellow] {', '.join(missing)}")
