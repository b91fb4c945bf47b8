"""``checkout participant`` and ``checkout up``: the checkout as separate services.

* ``checkout participant payment|inventory|shipping [--transport http|rabbitmq] [--port]
  [--database-url]``: one service (:mod:`checkout.services.server`) on 8001 / 8002 / 8003 by
  default, its own database from ``--database-url`` / ``SAGAWAY_DATABASE_URL`` (default
  ``sqlite:///./<name>.db``). Its HTTP API is always served; ``--transport`` decides how saga
  commands reach it (HTTP on that API, or its RabbitMQ queue).
* ``checkout up [--transport http|rabbitmq]``: the three services and the gateway as child
  processes of this one, their output prefixed and coloured; SIGINT (Ctrl-C) or SIGTERM stops
  them all (the gateway first, so no command is sent to a service already gone). Everything
  lives in the working directory (``sagaway.db``, ``payment.db``...), so a second ``checkout
  up`` resumes every saga the first left unfinished. A child that dies stops the others: exit
  status 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from enum import StrEnum
from typing import Annotated

import httpx
import typer
from rich.text import Text

from checkout.cli import (
    app,
    bind,
    console,
    err,
    fail,
    handle_stop,
    is_loopback,
    load_settings,
    run_server,
)
from checkout.launch import STOP
from checkout.services.specs import SERVICES, service_url


class ServiceName(StrEnum):
    payment = "payment"
    inventory = "inventory"
    shipping = "shipping"


class RemoteTransport(StrEnum):
    http = "http"
    rabbitmq = "rabbitmq"


@app.command()
def participant(
    ctx: typer.Context,
    name: Annotated[ServiceName, typer.Argument(help="The service to run")],
    transport: Annotated[
        RemoteTransport, typer.Option(help="How saga commands reach it")
    ] = RemoteTransport.http,
    port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help="HTTP port [default: 8001 / 8002 / 8003]"),
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    database_url: Annotated[
        str | None,
        typer.Option(
            help="Its own database [default: SAGAWAY_DATABASE_URL or sqlite:///./<name>.db]"
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "warning",
) -> None:
    """Run one of the checkout's services: payment, inventory or shipping."""
    handle_stop(ctx)
    from checkout.services.server import create_service_app

    spec = SERVICES[name.value]
    url = database_url or os.environ.get("SAGAWAY_DATABASE_URL") or spec.default_database_url
    settings = load_settings(database_url=url, host=host, port=spec.port if port is None else port)
    if settings.demo and settings.admin_token is None and not is_loopback(settings.host):
        fail(
            f"demo mode without SAGAWAY_ADMIN_TOKEN lets anyone reset the {spec.name} service "
            f"and read its data, so it is only served on loopback, not on {settings.host!r}: "
            "set SAGAWAY_ADMIN_TOKEN (the gateway sends it too), or SAGAWAY_DEMO=false"
        )
    sock = bind(settings.host, settings.port)
    actual = sock.getsockname()[1]
    application = create_service_app(
        spec.name, settings, transport=transport.value, rabbitmq_url=settings.rabbitmq_url
    )
    base = f"http://{settings.host}:{actual}"
    commands = f"{base}/saga" if transport is RemoteTransport.http else f"queue {spec.name}"
    startup = (
        f"{spec.name} service on {base} (database {url}; saga commands over "
        f"{transport.value}: {commands}), API docs at {base}/docs"
    )
    run_server(application, sock, settings, log_level, startup, {"docs": f"{base}/docs"})


# --------------------------------------------------------------------------- checkout up

COLOURS = {"gateway": "bold cyan", "payment": "green", "inventory": "yellow", "shipping": "magenta"}
STOP_SECONDS = 15.0  # each child's graceful stop, then SIGKILL


async def _pump(name: str, stream: asyncio.StreamReader) -> None:
    width = max(len(n) for n in COLOURS)
    while line := await stream.readline():
        prefix = Text(f"{name:<{width}} | ", style=COLOURS[name])
        console.print(prefix + Text(line.decode(errors="replace").rstrip()), soft_wrap=True)


async def _spawn(name: str, args: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "checkout",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        # A session of its own: Ctrl-C reaches this process only, which stops the children
        # in order (the gateway before the services it calls).
        start_new_session=True,
    )
    assert process.stdout is not None
    asyncio.get_running_loop().create_task(_pump(name, process.stdout))
    return process


async def _healthy(url: str, process: asyncio.subprocess.Process, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=1.0) as client:
        while time.monotonic() < deadline and process.returncode is None:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{url}/health")).status_code == 200:
                    return True
            await asyncio.sleep(0.2)  # polling a child's start-up: no event to wait on
    return False


async def _stop(name: str, process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(STOP_SECONDS):
            await process.wait()
    except TimeoutError:
        err.print(f"{name} did not stop in {STOP_SECONDS:.0f} s: killed")
        process.kill()
        await process.wait()


async def _up(transport: str, base_port: int) -> int:
    gateway_port = base_port
    ports = {name: base_port + n for n, name in enumerate(SERVICES, start=1)}
    settings = load_settings()
    env = {**os.environ, "SAGAWAY_TRANSPORT": transport}
    # The services send seed 004's events to the gateway (over HTTP), which passes them on.
    env["SAGAWAY_GATEWAY_URL"] = f"http://127.0.0.1:{gateway_port}"
    children: dict[str, asyncio.subprocess.Process] = {}
    if STOP.requested:  # asked to stop while it imported: nothing to start, nothing to stop
        console.print("checkout up: stopped before starting")
        return 0
    status = 0
    try:
        for name, spec in SERVICES.items():
            service_env = {**env, "SAGAWAY_DATABASE_URL": spec.default_database_url}
            args = ["participant", name, "--transport", transport, "--port", str(ports[name])]
            children[name] = await _spawn(name, args, service_env)
            env[spec.url_variable] = service_url(name, ports[name])
        for name in SERVICES:
            if not await _healthy(service_url(name, ports[name]), children[name], 60):
                err.print(f"[red]the {name} service did not start[/red]")
                return 1
        gateway_env = {**env, "SAGAWAY_DATABASE_URL": settings.database_url}
        children["gateway"] = await _spawn(
            "gateway", ["serve", "--port", str(gateway_port)], gateway_env
        )
        console.print(
            f"checkout up over {transport}: gateway http://127.0.0.1:{gateway_port}, "
            + ", ".join(f"{n} {service_url(n, ports[n])}" for n in SERVICES)
            + " (Ctrl-C stops them all)",
            highlight=False,
        )
        waits = {
            asyncio.ensure_future(p.wait()): name for name, p in children.items()
        }  # fmt: skip
        stopping = asyncio.ensure_future(STOP.wait())  # at once if asked while starting
        done, _ = await asyncio.wait([stopping, *waits], return_when=asyncio.FIRST_COMPLETED)
        if stopping not in done:
            died = next(waits[task] for task in done if task in waits)
            err.print(f"[red]{died} exited ({children[died].returncode}): stopping the rest[/red]")
            status = 1
        stopping.cancel()
    finally:
        if "gateway" in children:
            await _stop("gateway", children["gateway"])
        await asyncio.gather(*(_stop(n, p) for n, p in children.items() if n != "gateway"))
    console.print("stopped: unfinished sagas resume on the next `checkout up`")
    return status


@app.command()
def up(
    ctx: typer.Context,
    transport: Annotated[
        RemoteTransport, typer.Option(help="How the gateway reaches the services")
    ] = RemoteTransport.http,
    base_port: Annotated[
        int,
        typer.Option(
            min=1, max=65532, help="The gateway's port; payment, inventory, shipping the next 3"
        ),
    ] = 8000,
) -> None:
    """Run the gateway and the three services (Ctrl-C stops them all)."""
    handle_stop(ctx)
    status = asyncio.run(_up(transport.value, base_port))
    if status:
        raise typer.Exit(status)


__all__ = ["participant", "up"]
