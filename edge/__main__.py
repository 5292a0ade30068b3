"""python -m edge: settings from the environment -> logging -> the HTTP + WebSocket server.

SIGTERM/SIGINT (caught by uvicorn) stop accepting, close WebSockets with 1001, finish
in-flight requests within RIDESHARE_SHUTDOWN_GRACE_S, then close the upstream channels.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from edge.app import running
from edge.settings import EdgeSettings
from rideshare.log import configure_logging
from rideshare.settings import SettingsError

logger = logging.getLogger("edge")


async def main(settings: EdgeSettings) -> None:
    async with running(settings) as edge:
        await edge.finished()
    logger.info("edge stopped")


if __name__ == "__main__":
    try:
        edge_settings = EdgeSettings.from_env()
    except SettingsError as exc:
        sys.exit(f"edge: {exc}")
    configure_logging("edge", edge_settings.log_level)
    asyncio.run(main(edge_settings))
