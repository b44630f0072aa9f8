"""Serving an IOC: caproto's asyncio server with TCP_NODELAY, and a clean shutdown.

caproto's asyncio server leaves Nagle's algorithm on for the sockets it
accepts. A libca client (pyepics, ophyd) doing a put-with-completion and then
a get waits for the server's delayed ACK: about 40 ms per round trip. The
:class:`NoDelayContext` sets ``TCP_NODELAY`` on every accepted socket, which
brings the round trip to about a millisecond (docs/ioc.md has the figures).

caproto also holds every monitor update up to 10 ms
(``CAPROTO_SERVER_HIGH_LOAD_TIMEOUT_SEC``), waiting for more to batch with it,
so a lone update (a DMOV, an LVIO) reaches clients 10 ms late and can arrive
after the put-completion of the put that caused it. :class:`LowLatencyCircuit`
sends at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from caproto.asyncio.server import Context, VirtualCircuit

from ioc_sim.beamline import BeamlineIOC
from ioc_sim.names import SERVER_NAMES
from twin.errors import ConfigError

__all__ = ["NoDelayContext", "NagleOffContext", "LowLatencyCircuit", "SERVERS", "SERVER_NAMES",
           "server_context", "serve", "run_forever", "OneLineRefusals", "PortTakenError",
           "quiet_refusals"]

log = logging.getLogger(__name__)


class PortTakenError(ConfigError):
    """The CA port asked for is taken (another server listens on it)."""


class OneLineRefusals(logging.Filter):
    """One log line per refused put instead of caproto's full traceback.

    caproto logs every put a putter refuses (a limit, a bound, a read-only
    field) with ``log.exception``: a 40-line traceback each, 5.5 MB of stderr
    per 10,000 refusals. A refusal is the client's error and the client gets
    it as a CA error; the IOC's log keeps one line naming the client and the
    reason, at WARNING.
    """

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102
        if record.exc_info and str(record.msg).startswith("Invalid write request"):
            exc = record.exc_info[1]
            user, host = (record.args or ("?", "?"))[:2]  # type: ignore[index]
            record.msg = "refused a write by %s@%s: %s"
            record.args = (user, host, exc)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def quiet_refusals() -> None:
    """Install :class:`OneLineRefusals` on caproto's circuit logger (once)."""
    circ = logging.getLogger("caproto.circ")
    if not any(isinstance(f, OneLineRefusals) for f in circ.filters):
        circ.addFilter(OneLineRefusals())


class LowLatencyCircuit(VirtualCircuit):
    """A client circuit that waits at most :attr:`batch_wait_s` for more monitor updates
    to batch with a queued one (caproto's stock circuit waits 10 ms).

    Updates that queue up while a send is in progress are still sent together.
    The default, 0, sends what is queued at once: a monitor update reaches the
    client in 0.7 ms instead of 12 ms. Under a saturating image stream the
    smaller sends push libca into flow control (EventsOff) more often, and CA
    then drops intermediate updates of other channels (latest values are always
    delivered): 5-8 % of a 1 kHz scalar beside a 1 kHz 512 x 512 image, against
    2-3 % with 1 ms and none with caproto's 10 ms (docs/ioc.md).
    """

    #: longest wait for more updates to batch with a queued one, s (0: none)
    batch_wait_s: float = 0.0

    async def get_from_sub_queue(self, timeout: float | None = None) -> Any:  # noqa: D102
        if timeout is None:
            return await self.subscription_queue.get()
        if self.batch_wait_s <= 0:
            try:
                return self.subscription_queue.get_nowait()
            except asyncio.QueueEmpty:
                return None
        try:
            return await asyncio.wait_for(self.subscription_queue.get(),
                                          min(timeout, self.batch_wait_s))
        except TimeoutError:
            return None


class NagleOffContext(Context):
    """caproto's asyncio server context with ``TCP_NODELAY`` on every client socket."""

    async def tcp_handler(self, client: Any, addr: tuple[str, int]) -> None:  # noqa: D102
        sock = client.writer.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError as exc:  # pragma: no cover - e.g. a non-TCP transport
                log.warning("could not set TCP_NODELAY for %s: %s", addr, exc)
        await super().tcp_handler(client, addr)


class NoDelayContext(NagleOffContext):
    """beamtwin's server: ``TCP_NODELAY`` and :class:`LowLatencyCircuit` circuits."""

    CircuitClass = LowLatencyCircuit


#: CA server flavours: beamtwin's; caproto's stock one and stock plus TCP_NODELAY
#: only (to measure against, and to tell the two fixes apart)
SERVERS: dict[str, type[Context]] = dict(zip(SERVER_NAMES,
                                             (NoDelayContext, NagleOffContext, Context),
                                             strict=True))


async def serve(ioc: BeamlineIOC, *, interfaces: list[str] | None = None,
                on_ready: Callable[[int], Awaitable[None] | None] | None = None,
                server: str = "beamtwin", port: int | None = None) -> None:
    """Serve *ioc* until the task is cancelled (SIGINT or SIGTERM from :func:`run_forever`).

    Parameters
    ----------
    ioc : BeamlineIOC
    interfaces : list of str, optional
        Interfaces to bind (default: caproto's, from ``EPICS_CAS_INTF_ADDR_LIST``
        or all).
    on_ready : callable, optional
        Called with the TCP port once the server listens and every PV holds
        its initial value.
    server : str
        ``"beamtwin"`` (TCP_NODELAY, low-latency monitors) or ``"stock"``
        (caproto's own, to measure against).
    port : int, optional
        Serve on exactly this TCP port, or raise :class:`PortTakenError`.
        caproto alone tries the port of ``EPICS_CA_SERVER_PORT`` first and then
        silently takes a random one, where no client would look.
    """
    quiet_refusals()
    await ioc.initialise()
    ctx = server_context(server)(ioc.pvdb, interfaces)
    if port is not None:
        _require_port(ctx, port)

    async def startup(async_lib: Any) -> None:
        ioc.start_background()
        await ioc.status.ready.write(1, verify_value=False)
        if on_ready is not None:
            result = on_ready(ctx.port)
            if asyncio.iscoroutine(result):
                await result

    try:
        await ctx.run(log_pv_names=False, startup_hook=startup)
    finally:
        await ioc.stop_background()


def _require_port(ctx: Context, port: int) -> None:
    """Make *ctx* bind *port* on every interface or fail, never another port."""

    async def bind_exactly(make_socket: Any) -> tuple[int, dict[str, Any]]:
        sockets: dict[str, Any] = {}
        for interface in ctx.interfaces:
            try:
                sockets[interface] = await make_socket(interface, port)
            except OSError as exc:
                for sock in sockets.values():
                    sock.close()
                raise PortTakenError(f"cannot serve on {interface}:{port}: {exc.strerror or exc}"
                                     f"; another server (an IOC?) listens there. Stop it, or "
                                     f"choose another --port") from None
        return port, sockets

    ctx.ca_server_port = port
    ctx._bind_tcp_sockets_with_consistent_port_number = bind_exactly  # type: ignore[method-assign]


async def _cancel_the_rest() -> None:
    """Cancel every task left on the loop (caproto's), and let them end."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def server_context(server: str) -> type[Context]:
    """The server context class of flavour *server*; raises ConfigError if unknown."""
    if server not in SERVERS:
        raise ConfigError(f"unknown CA server {server!r}; allowed: {', '.join(SERVERS)}")
    return SERVERS[server]


def run_forever(ioc: BeamlineIOC, *, interfaces: list[str] | None = None,
                on_ready: Callable[[int], Awaitable[None] | None] | None = None,
                server: str = "beamtwin", port: int | None = None) -> None:
    """Serve *ioc* in the foreground until SIGINT or SIGTERM, then shut down cleanly.

    A trace in flight when the signal comes (it runs in a worker thread, which
    Python cannot interrupt) is not waited for: its result is no longer needed,
    and a stop must not wait seconds for it. The caller exits the process.
    """
    executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="beamtwin-trace")

    async def main() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        loop.set_default_executor(executor)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)  # type: ignore[union-attr]
        try:
            await serve(ioc, interfaces=interfaces, on_ready=on_ready, server=server, port=port)
        except asyncio.CancelledError:
            pass
        finally:
            # a second signal while shutting down is ignored, not fatal: the
            # shutdown takes well under a second and ends with the stopped line
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, lambda: None)

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main())
        executor.shutdown(wait=False, cancel_futures=True)
        loop.run_until_complete(_cancel_the_rest())
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
