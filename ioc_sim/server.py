"""Serving an IOC: caproto's asyncio server with TCP_NODELAY, and a clean shutdown.

caproto's asyncio server leaves Nagle's algorithm on for the sockets it
accepts. A libca client (pyepics, ophyd) doing a put-with-completion and then
a get waits for the server's delayed ACK: about 40 ms per round trip. The
:class:`NoDelayContext` sets ``TCP_NODELAY`` on every accepted socket, which
brings the round trip to about a millisecond (docs/ioc.md has the figures).

caproto also holds every monitor update up to 10 ms
(``CAPROTO_SERVER_HIGH_LOAD_TIMEOUT_SEC``), waiting for more to batch with it.
:class:`LowLatencyCircuit` sends what is queued at once instead: updates that
arrive while a send is in progress still go out together, so batching under
load is kept, and a lone update (a DMOV, an LVIO) is not delayed.
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

__all__ = ["NoDelayContext", "LowLatencyCircuit", "serve", "run_forever"]

log = logging.getLogger(__name__)


class LowLatencyCircuit(VirtualCircuit):
    """A client circuit that sends queued monitor updates without waiting for more."""

    async def get_from_sub_queue(self, timeout: float | None = None) -> Any:  # noqa: D102
        if timeout is None:
            return await self.subscription_queue.get()
        try:
            return self.subscription_queue.get_nowait()
        except asyncio.QueueEmpty:
            return None


class NoDelayContext(Context):
    """caproto's asyncio server context with ``TCP_NODELAY`` on every client socket
    and :class:`LowLatencyCircuit` circuits."""

    CircuitClass = LowLatencyCircuit

    async def tcp_handler(self, client: Any, addr: tuple[str, int]) -> None:  # noqa: D102
        sock = client.writer.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError as exc:  # pragma: no cover - e.g. a non-TCP transport
                log.warning("could not set TCP_NODELAY for %s: %s", addr, exc)
        await super().tcp_handler(client, addr)


async def serve(ioc: BeamlineIOC, *, interfaces: list[str] | None = None,
                on_ready: Callable[[int], Awaitable[None] | None] | None = None) -> None:
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
    """
    await ioc.initialise()
    ctx = NoDelayContext(ioc.pvdb, interfaces)

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


def run_forever(ioc: BeamlineIOC, *, interfaces: list[str] | None = None,
                on_ready: Callable[[int], Awaitable[None] | None] | None = None) -> None:
    """Serve *ioc* in the foreground until SIGINT or SIGTERM, then shut down cleanly."""

    async def main() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)  # type: ignore[union-attr]
        try:
            await serve(ioc, interfaces=interfaces, on_ready=on_ready)
        except asyncio.CancelledError:
            pass
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    asyncio.run(main())
