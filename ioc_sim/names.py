"""Names the command lines offer before importing caproto (kept apart, so ``--help`` is fast)."""

__all__ = ["SERVER_NAMES"]

#: CA server flavours of :data:`ioc_sim.server.SERVERS`
SERVER_NAMES = ("beamtwin", "nodelay", "stock")
