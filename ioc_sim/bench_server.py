"""A rate-source IOC for monitor benchmarks: a scalar at a set rate and an image stream.

``python -m ioc_sim.bench_server --prefix P --port N [--ca-server beamtwin|stock]``
serves

* ``{P}Counter`` (LONG): incremented and posted ``--scalar-hz`` times a second
  (1 kHz by default), on absolute deadlines so the rate does not drift;
* ``{P}Image`` (FLOAT array, ``--image-size`` squared): a new frame posted as
  fast as the server can, or at ``--image-hz``; its first pixel holds the frame
  number;
* ``{P}Posted_RBV`` (LONG): images posted so far.

It exists to measure what the CA layer delivers (``beamtwin bench ioc``), apart
from the twin.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time

import click
import numpy as np
from caproto import ChannelType
from caproto.server import PVGroup, pvproperty

from ioc_sim.pvs import array_pv, int_pv
from ioc_sim.server import SERVER_NAMES, server_context

__all__ = ["RateSource"]


class RateSource(PVGroup):
    """Scalar and image sources for monitor-rate benchmarks (see the module docstring)."""

    counter = pvproperty(name="Counter", value=0, dtype=ChannelType.LONG, read_only=True,
                         doc="posted at the scalar rate")
    posted = int_pv("Posted_RBV", "images posted")

    def __init__(self, prefix: str, *, scalar_hz: float, image_size: int, image_hz: float):
        super().__init__(prefix=prefix)
        self.scalar_hz, self.image_size, self.image_hz = scalar_hz, image_size, image_hz
        rng = np.random.default_rng(0)
        self._frames = [rng.poisson(20, image_size * image_size).astype(np.float32)
                        for _ in range(4)]

    async def scalar_loop(self) -> None:
        """Post the counter on absolute deadlines."""
        period = 1.0 / self.scalar_hz
        nxt = time.monotonic()
        n = 0
        while True:
            nxt += period
            delay = nxt - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            n += 1
            await self.counter.write(n, verify_value=False)

    async def image_loop(self, image: pvproperty) -> None:
        """Post frames as fast as possible (or at the image rate)."""
        n = 0
        period = 1.0 / self.image_hz if self.image_hz > 0 else 0.0
        nxt = time.monotonic()
        while True:
            frame = self._frames[n % len(self._frames)]
            frame[0] = n
            await image.write(frame, verify_value=False)
            n += 1
            await self.posted.write(n, verify_value=False)
            if period:
                nxt += period
                await asyncio.sleep(max(0.0, nxt - time.monotonic()))
            else:
                await asyncio.sleep(0)


def _make(prefix: str, scalar_hz: float, image_size: int, image_hz: float) -> RateSource:
    image = array_pv("Image", "benchmark image", image_size * image_size)
    cls = type("RateSourceImage", (RateSource,), {"image": image})
    return cls(prefix, scalar_hz=scalar_hz, image_size=image_size, image_hz=image_hz)


@click.command()
@click.option("--prefix", default="BTB:", show_default=True)
@click.option("--port", type=int, default=None)
@click.option("--interface", "interfaces", multiple=True)
@click.option("--ca-server", type=click.Choice(list(SERVER_NAMES)),
              default="beamtwin")
@click.option("--scalar-hz", type=float, default=1000.0, show_default=True)
@click.option("--image-size", type=int, default=512, show_default=True)
@click.option("--image-hz", type=float, default=1000.0, show_default=True,
              help="Image posting rate; 0: as fast as possible.")
@click.option("--json", "as_json", is_flag=True)
def main(prefix: str, port: int | None, interfaces: tuple[str, ...], ca_server: str,
         scalar_hz: float, image_size: int, image_hz: float, as_json: bool) -> None:
    """Serve the benchmark rate source until SIGINT or SIGTERM."""
    if port is not None:
        os.environ["EPICS_CA_SERVER_PORT"] = str(port)
    logging.getLogger("caproto").setLevel(logging.ERROR)
    group = _make(prefix, scalar_hz, image_size, image_hz)

    async def run() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)  # type: ignore[union-attr]
        ctx = server_context(ca_server)(group.pvdb, list(interfaces) or None)

        async def startup(async_lib) -> None:
            loop.create_task(group.scalar_loop())
            loop.create_task(group.image_loop(group.image))  # type: ignore[attr-defined]
            click.echo(json.dumps({"event": "ready", "prefix": prefix, "port": ctx.port,
                                   "ca_server": ca_server}))

        try:
            await ctx.run(startup_hook=startup)
        except asyncio.CancelledError:
            pass

    asyncio.run(run())
    click.echo(json.dumps({"event": "stopped", "prefix": prefix, "frames": 0}))


if __name__ == "__main__":
    main()
