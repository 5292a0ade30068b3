"""python -m edge: settings from the environment -> logging -> the HTTP + WebSocket server.

SIGTERM/SIGINT (caught by uvicorn) stop accepting, close WebSockets with 1001, finish
in-flight requests within RIDESHARE_SHUTDOWN_GRACE_S, then close the upstream channels.

Two process-wide choices live here, not in the app (tests run the app in their own loop):
- uvloop: the edge's work is per-message event-loop and transport work for thousands of
  sockets; uvloop does it in C (measured: ~20 % less CPU per position, docs/PERFORMANCE.md).
- the cyclic garbage collector (rideshare.runtime.tune_gc_for_serving): with thousands of
  sockets the heap holds ~10^6 long-lived objects, and every full collection walked them all
  (100-600 ms pauses, every few seconds under load, each one a latency spike on every live
  position).

With ``RIDESHARE_EDGE_WORKERS`` above 1 (the default: one per core) this process is the
workers' parent (edge/workers.py) and each worker is ``python -m edge`` with one worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

import uvloop

from edge.app import running
from edge.settings import EdgeSettings
from edge.workers import HEARTBEAT_FD_ENV, heartbeat, serve_workers
from rideshare.log import configure_logging
from rideshare.ports import PortInUseError
from rideshare.runtime import tune_gc_for_serving
from rideshare.settings import SettingsError

logger = logging.getLogger("edge")


async def main(settings: EdgeSettings) -> None:
    async with running(settings) as edge, asyncio.TaskGroup() as beats:
        tune_gc_for_serving()
        beat = None
        if fd := os.environ.get(HEARTBEAT_FD_ENV):  # a worker: its parent watches its loop
            beat = beats.create_task(heartbeat(int(fd)))
        await edge.finished()
        if beat is not None:
            beat.cancel()
    logger.info("edge stopped")


if __name__ == "__main__":
    try:
        edge_settings = EdgeSettings.from_env()
    except SettingsError as exc:
        sys.exit(f"edge: {exc}")
    configure_logging("edge", edge_settings.log_level)
    try:
        uvloop.run(
            main(edge_settings) if edge_settings.workers == 1 else serve_workers(edge_settings)
        )
    except PortInUseError as exc:
        sys.exit(f"edge: {exc}")
