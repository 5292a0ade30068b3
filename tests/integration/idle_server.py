"""A gRPC server with nothing to say, for the keepalive test: ``python -m
tests.integration.idle_server <keepalive time_s>`` prints its port, then serves health
(SERVING) until SIGTERM; SIGUSR1 turns it NOT_SERVING, which a health Watch stream sees.
Its own process, so that the test can block its event loop without blocking the server's."""

from __future__ import annotations

import asyncio
import signal
import sys

from rideshare.grpc_server import GrpcServer
from rideshare.keepalive import Keepalive


async def serve(keepalive: Keepalive) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    failing = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, failing.set)

    async def readiness() -> None:
        if failing.is_set():
            raise RuntimeError("asked to stop serving")

    server = GrpcServer(
        "idle",
        readiness=readiness,
        health_interval_s=0.1,
        secret="idle-server-" + "s" * 32,
        keepalive=keepalive,
    )
    async with server:
        print(server.port, flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(serve(Keepalive(time_s=float(sys.argv[1]), timeout_s=2.0)))
