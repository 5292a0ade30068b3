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
"""

from __future__ import annotations

import logging
import sys

import uvloop

from edge.app import running
from edge.settings import EdgeSettings
from rideshare.log import configure_logging
from rideshare.ports import PortInUseError
from rideshare.runtime import tune_gc_for_serving
from rideshare.settings import SettingsError

logger = logging.getLogger("edge")


async def main(settings: EdgeSettings) -> None:
    async with running(settings) as edge:
        tune_gc_for_serving()
        await edge.finished()
    logger.info("edge stopped")


if __name__ == "__main__":
    try:
        edge_settings = EdgeSettings.from_env()
    except SettingsError as exc:
        sys.exit(f"edge: {exc}")
    configure_logging("edge", edge_settings.log_level)
    try:
        uvloop.run(main(edge_settings))
    except PortInUseError as exc:
        sys.exit(f"edge: {exc}")
