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
from typing import Any

from caproto.asyncio.server import Context, VirtualCircuit

from ioc_sim.beamline import BeamlineIOC
from ioc_sim.names import SERVER_NAMES
from twin.errors import ConfigError

__all__ = ["NoDelayContext", "NagleOffContext", "LowLatencyCircuit", "SERVERS", "SERVER_NAMES",
           "server_context", "serve", "run_forever"]

log = logging.getLogger(__name__)


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
                server: str = "beamtwin") -> None:
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
    """
    await ioc.initialise()
    ctx = server_context(server)(ioc.pvdb, interfaces)

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


def server_context(server: str) -> type[Context]:
    """The server context class of flavour *server*; raises ConfigError if unknown."""
    if server not in SERVERS:
        raise ConfigError(f"unknown CA server {server!r}; allowed: {', '.join(SERVERS)}")
    return SERVERS[server]


def run_forever(ioc: BeamlineIOC, *, interfaces: list[str] | None = None,
                on_ready: Callable[[int], Awaitable[None] | None] | None = None,
                server: str = "beamtwin") -> None:
    """Serve *ioc* in the foreground until SIGINT or SIGTERM, then shut down cleanly."""

    async def main() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)  # type: ignore[union-attr]
        try:
            await serve(ioc, interfaces=interfaces, on_ready=on_ready, server=server)
        except asyncio.CancelledError:
            pass
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    asyncio.run(main())
