"""``checkout``: run the checkout service.

* ``checkout serve [--host] [--port] [--no-worker]``: the HTTP API (uvicorn) with an engine
  executing sagas in the same process, or with ``--no-worker`` an API that only records sagas
  for ``checkout worker`` processes to run. Migrations are applied on start.
* ``checkout worker``: an engine and no HTTP, until SIGTERM/SIGINT.
* ``checkout demo``: the four classic scenarios on a fresh demo database (a temporary
  directory unless ``--dir``), each saga's steps printed as a table; exits 1 if any scenario
  does not end as it should.
* ``checkout migrate``: bring the shop schema and the saga log schema up to date.

Configuration comes from ``SAGAWAY_*`` variables (see :mod:`checkout.settings`); bad values
exit with status 2 and a message, a port that cannot be bound with status 1.
"""

from __future__ import annotations

import sys

from checkout.launch import STOP, install_for

if __name__ == "__main__":  # `python -m checkout.cli`: SIGTERM handled before the imports below
    install_for(sys.argv)

import asyncio
import contextlib
import gc
import ipaddress
import logging
import socket
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from checkout.bootstrap import Role, Services, bootstrap, open_shop_database, server_owner_id
from checkout.db import EMBEDDED, GATEWAY
from checkout.db import migrate as migrate_shop
from checkout.domain.models import OrderLine
from checkout.domain.rules import format_money
from checkout.service import OrderView
from checkout.settings import Settings, async_database_url
from sagaway import Phase, SagawayError, open_store
from sagaway.logs import JsonFormatter, configure_logging
from sagaway.tracing import check_exporters

T = TypeVar("T")

app = typer.Typer(
    help="The Sagaway checkout service: every order is a durable saga.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def handle_stop(ctx: typer.Context) -> None:
    """:data:`STOP` for the running command (the `checkout` script installed it already); the
    handlers found are put back when the command returns, so a command invoked in-process (a
    test's CliRunner) leaves its caller's SIGTERM and Ctrl-C as they were."""
    ctx.call_on_close(STOP.install())


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (plus overrides), checked before anything starts."""
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"SAGAWAY_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        )
        fail(f"invalid configuration: {problems}")
    try:
        async_database_url(settings.database_url)
        open_store(settings.store_url)
        check_exporters()
    except (ValueError, SagawayError) as exc:
        fail(str(exc))
    return settings


def _record(name: str, message: str, **fields: str) -> logging.LogRecord:
    record = logging.LogRecord(name, logging.INFO, __file__, 0, message, None, None)
    record.__dict__.update(fields)
    return record


def fast_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (``uvicorn[standard]`` brings it), else None
    (asyncio's default)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a dependency of uvicorn[standard]
        return None
    return uvloop.new_event_loop


# The collector's thresholds for a serving process (CPython's default: 700, 10, 10). Every
# request allocates thousands of container objects and 32 requests in flight hold theirs when
# a collection runs, so at 700 young objects each collection promotes live request state, and
# the older generations fill and are traversed again and again: measured under
# http_checkout.py --serve, ~10% of the server's CPU went to the collector. With these and the
# startup heap frozen, ~3% (see README, the HTTP row). Reference cycles are still collected,
# only less often; memory held by uncollected young garbage stays a few MB.
SERVING_GC_THRESHOLDS = (20_000, 20, 100)


def tune_gc_for_serving() -> None:
    """Once the app has started: move everything alive now (modules, the app, the engine,
    SQLAlchemy and pydantic internals: ~150k objects) out of the collector's sight, since none
    of it becomes garbage while serving and a full collection would traverse it all, and
    collect less often (:data:`SERVING_GC_THRESHOLDS`)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*SERVING_GC_THRESHOLDS)


def configure_process_logging(settings: Settings, stream: Any = None) -> None:
    """The process's log lines in ``settings``' format and level (see ``configure_logging``),
    each record without what no line of ours shows: the caller's file and line (a stack walk
    per record), thread, process and multiprocessing names. ~2 us of a ~11 us line: two saga
    lines per order."""
    configure_logging(settings.log_format, settings.log_level, stream=stream)
    logging._srcfile = None  # the logging HOWTO's "Optimization" table: no sys._getframe()
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def is_loopback(host: str) -> bool:
    """True if every address ``host`` names is a loopback one (``""`` is every interface)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    if not host:
        return False
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False  # bind() reports it
    return all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket before anything else starts, so a second server on the same
    port fails here instead of recovering (and stealing) the first one's sagas."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        fail(f"cannot resolve host {host!r}: {exc}")
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", code=1)
    sock.set_inheritable(True)
    return sock


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[
        str | None, typer.Option(help="Interface to listen on [default: 127.0.0.1]")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help="Port (0 picks a free one) [default: 8000]"),
    ] = None,
    no_worker: Annotated[
        bool,
        typer.Option("--no-worker", help="API only: sagas are run by `checkout worker`"),
    ] = False,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "warning",
    transport: Annotated[
        str | None,
        typer.Option(
            help="How sagas reach payment, inventory and shipping: inprocess (this process, "
            "one database), http or rabbitmq (`checkout participant` services) "
            "[default: SAGAWAY_TRANSPORT or inprocess]"
        ),
    ] = None,
) -> None:
    """Serve the HTTP API (and run sagas in the same process unless --no-worker)."""
    handle_stop(ctx)
    from checkout.api import create_app

    settings = load_settings(host=host, port=port, transport=transport)
    if settings.demo and settings.admin_token is None and not is_loopback(settings.host):
        fail(
            f"demo mode without SAGAWAY_ADMIN_TOKEN lets anyone reset the shop and read every "
            f"customer's data, so it is only served on loopback (127.0.0.1, ::1), not on "
            f"{settings.host!r}: set SAGAWAY_ADMIN_TOKEN, or SAGAWAY_DEMO=false"
        )
    sock = bind(settings.host, settings.port)
    actual_port = sock.getsockname()[1]
    role = Role.API if no_worker else Role.ALL
    application = create_app(settings, role=role, owner_id=server_owner_id(actual_port))
    shown = f"[{settings.host}]" if ":" in settings.host else settings.host
    mode = "API only" if no_worker else "API + engine"
    if settings.transport != "inprocess":
        mode += f", services over {settings.transport}"
    base = f"http://{shown}:{actual_port}"
    where = {"ui": f"{base}/", "docs": f"{base}/docs", "metrics": f"{base}/metrics"}
    startup = (
        f"checkout serving on {base} ({mode}): shop and sagas at {where['ui']} "
        f"(sagas: {base}/ui/sagas), API docs at {where['docs']}"
        + (f", metrics at {where['metrics']}" if settings.metrics else "")
    )
    run_server(application, sock, settings, log_level, startup, where)


def run_server(
    application: Any,
    sock: socket.socket,
    settings: Settings,
    log_level: str,
    startup: str,
    where: dict[str, str],
) -> None:
    """Serve ``application`` on the bound ``sock`` until SIGTERM/SIGINT (exit status 0), with
    the logging of ``settings``; ``startup`` is printed once the app is built."""
    import uvicorn

    configure_process_logging(settings)
    config = uvicorn.Config(
        application,
        log_config=None,  # uvicorn's records go through configure_logging's format too
        log_level=log_level,
        # Access lines are INFO: below the default level nothing would be written, but uvicorn
        # would still format each line's arguments per request.
        access_log=log_level.lower() in ("trace", "debug", "info"),
        lifespan="on",
        timeout_graceful_shutdown=5,
        # Slow or greedy clients (see the README on what to put in front in production).
        timeout_keep_alive=settings.keep_alive_seconds,
        limit_concurrency=settings.max_connections,
    )

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                tune_gc_for_serving()

    server = Server(config)
    if settings.log_format == "json":  # stdout stays one JSON object per line
        print(JsonFormatter().format(_record("checkout", startup, **where)), flush=True)
    else:
        console.print(startup, highlight=False, soft_wrap=True)
    sys.stdout.flush()
    try:
        # A request before uvicorn installs its own handlers (once ``serve`` runs) still stops
        # it: uvicorn starts, skips its main loop and shuts down. The signal uvicorn re-raises
        # after its graceful shutdown is only recorded again: SIGTERM ends with status 0.
        # uvicorn picks uvloop only when it runs the loop itself; here we run it.
        with (
            STOP.listening(lambda: setattr(server, "should_exit", True)),
            asyncio.Runner(loop_factory=fast_loop_factory()) as runner,
        ):
            runner.run(server.serve(sockets=[sock]))
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    if not server.started:
        fail("the server did not start (see the log above)", code=3)


async def _run_worker(settings: Settings) -> None:
    configure_process_logging(settings)
    if STOP.requested:  # before anything is opened: no saga is claimed only to be let go
        console.print("stopped before starting")
        return
    async with bootstrap(settings, role=Role.WORKER) as services:
        if settings.metrics_port is not None:
            from prometheus_client import start_http_server

            start_http_server(settings.metrics_port, settings.host, services.registry)
            console.print(
                f"metrics at http://{settings.host}:{settings.metrics_port}/metrics",
                highlight=False,
            )
        console.print(
            f"checkout worker {services.engine.owner_id} running sagas from "
            f"{settings.store_url} (Ctrl-C or SIGTERM to stop)",
            highlight=False,
            soft_wrap=True,
        )
        sys.stdout.flush()
        await STOP.wait()
        console.print("stopping: sagas in flight resume on the next start")


@app.command()
def worker(ctx: typer.Context) -> None:
    """Run sagas (no HTTP) until SIGTERM or SIGINT."""
    handle_stop(ctx)
    settings = load_settings()
    _guard(lambda: _run_worker(settings))


@app.command()
def migrate() -> None:
    """Apply the shop database migrations and create/upgrade the saga log."""
    settings = load_settings()

    async def saga_log() -> None:
        store = open_store(settings.store_url)
        await store.open()
        await store.close()

    async def shop() -> None:
        db = await open_shop_database(settings.database_url)
        try:
            # Separate services migrate their own databases when they start.
            embedded = settings.transport == "inprocess"
            await migrate_shop(db, histories=EMBEDDED if embedded else [GATEWAY])
        finally:
            await db.dispose()

    try:
        asyncio.run(shop())
    except Exception as exc:
        fail(f"migrating {settings.database_url} failed: {exc}", code=1)
    _guard(saga_log)
    console.print(f"shop database {settings.database_url}: up to date", highlight=False)
    console.print(f"saga log {settings.store_url}: up to date", highlight=False)


def _guard(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    try:
        return asyncio.run(main())
    except SagawayError as exc:
        fail(str(exc), code=1)
    except OSError as exc:
        fail(str(exc), code=1)


# --------------------------------------------------------------------------- demo


@dataclass(frozen=True, slots=True)
class Scenario:
    title: str
    customer_id: str
    product_id: str
    quantity: int
    status: str  # expected order status
    error: str | None  # expected error


SCENARIOS = (
    Scenario("happy path: user_1 buys 2 x product_1", "user_1", "product_1", 2, "completed", None),
    Scenario(
        "inventory fails: user_1 buys 200 x product_1",
        "user_1",
        "product_1",
        200,
        "failed",
        "Insufficient inventory",
    ),
    Scenario(
        "payment fails: user_3 buys 10 x product_1 (inventory released)",
        "user_3",
        "product_1",
        10,
        "failed",
        "Insufficient funds",
    ),
    Scenario(
        "shipping fails: user_3 buys 1 x product_1 (payment refunded, inventory released)",
        "user_3",
        "product_1",
        1,
        "failed",
        "Invalid shipping address",
    ),
)


def _steps_table(title: str, view: OrderView) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("step", "phase", "status", "attempts", "error"):
        table.add_column(column)
    saga = view.saga
    if saga is not None:
        forward = [row for (_, phase), row in saga.steps.items() if phase is Phase.FORWARD]
        undo = [row for (_, phase), row in saga.steps.items() if phase is Phase.COMPENSATION]
        undo.sort(key=lambda row: row.started_at or 0.0)
        for row in forward + undo:
            colour = {"SUCCEEDED": "green", "FAILED": "red", "COMPENSATED": "yellow"}.get(
                row.status, "white"
            )
            table.add_row(
                row.name,
                row.phase,
                f"[{colour}]{row.status}[/{colour}]",
                str(row.attempts),
                row.error or "",
            )
    return table


async def run_demo(services: Services) -> bool:
    """Run the four scenarios; print their steps; True if each ended as expected."""
    shop = services.participants.shop
    before_totals = await shop.totals()
    ok = True
    for scenario in SCENARIOS:
        balances, stock = await shop.balances(), await shop.inventory()
        view, _ = await services.checkout.place_order(
            scenario.customer_id,
            [OrderLine(product_id=scenario.product_id, quantity=scenario.quantity)],
            wait=30,
        )
        console.print(_steps_table(scenario.title, view))
        saga_status = view.saga.status if view.saga is not None else "-"
        outcome = f"{view.status} (saga {saga_status})" + (f": {view.error}" if view.error else "")
        console.print(f"  order {view.order.id}: {outcome}", highlight=False)
        after_balances, after_stock = await shop.balances(), await shop.inventory()
        user, product = scenario.customer_id, scenario.product_id
        console.print(
            f"  {user} balance {format_money(balances[user])} -> "
            f"{format_money(after_balances[user])}; {product} stock {stock[product]} -> "
            f"{after_stock[product]}\n",
            highlight=False,
        )
        if view.status != scenario.status or view.error != scenario.error:
            err.print(
                f"[red]unexpected outcome:[/red] {view.status} {view.error!r}, expected "
                f"{scenario.status} {scenario.error!r}"
            )
            ok = False
    after_totals = await shop.totals()
    conserved = before_totals == after_totals
    console.print(
        f"money {format_money(after_totals.money_cents)} and units {after_totals.units} "
        + ("[green]conserved[/green]" if conserved else "[red]NOT conserved[/red]")
    )
    return ok and conserved


@app.command()
def demo(
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            file_okay=False,
            help="Keep the demo database in this directory (default: a temporary one)",
        ),
    ] = None,
) -> None:
    """Run the four classic checkout scenarios on a fresh demo database."""
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sagaway-")))
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "demo.db"
        for leftover in directory.glob("demo.db*"):
            leftover.unlink()
        url = f"sqlite:///{path}"
        settings = Settings(database_url=url, store_url=url, demo=True, worker_id="demo")
        console.print(f"demo database: {path}", highlight=False)

        async def main() -> bool:
            async with bootstrap(settings) as services:
                return await run_demo(services)

        if not _guard(main):
            raise typer.Exit(1)


def main() -> None:
    import checkout.cli_services  # noqa: F401  - registers `participant` and `up` on app

    app()


if __name__ == "__main__":
    # Run as `python -m checkout.cli`, this file is `__main__`, while `checkout.cli_services`
    # registers its commands on the `checkout.cli` module's app: run that one.
    from checkout.cli import main as registered_main

    registered_main()
