"""The simulator inside ``rideshare up --demo``: a small city that runs until Ctrl-C, and a
banner with the live map's URL.

Like every simulated app it knows the edge only by its public URLs; the admin token in the
banner is minted by the caller (``rideshare.cli``, which knows the edge's secret), and
:func:`viewer_url` is the one place that builds the viewer's address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from rideshare.simulate.city import BERLIN, BBox
from rideshare.simulate.config import SimConfig
from rideshare.simulate.runner import SimulationError, run
from rideshare.supervisor import service_port

__all__ = ["demo_banner", "demo_config", "running_demo", "viewer_url"]

logger = logging.getLogger(__name__)


def viewer_url(edge_url: str, token: str, *, bbox: BBox | None = None) -> str:
    """The edge's live map, signed in with ``token``; ``bbox`` frames it (default: the world).

    The token goes in the fragment, which the browser keeps to itself: it never reaches a
    server's access log, and the page sends it as a bearer header.
    """
    query = f"?bbox={bbox}" if bbox is not None else ""
    return f"{edge_url}/viewer{query}#token={token}"


def demo_config(edge_url: str, *, stripe_api_base: str = "") -> SimConfig:
    """50 drivers and 20 riders in central Berlin, each rider with a test card; a ride takes
    about 20-40 s."""
    return SimConfig(
        edge_url=edge_url,
        stripe_api_base=stripe_api_base,
        drivers=50,
        riders=20,
        rate=0.5,
        duration_s=0,  # until Ctrl-C
        speedup=20.0,
        accept_prob=0.85,
        cancel_prob=0.1,
        seed=1,
        city=BERLIN,
        view="lines",
        view_every_s=15.0,
    )


def demo_banner(edge_url: str, token: str, city: BBox) -> str:
    trip, location = (service_port(n) for n in ("trip", "location"))
    return "\n".join(
        [
            "",
            "demo: 50 simulated drivers and 20 riders are riding around central Berlin.",
            "  live map (signed in with an admin token):",
            f"    {viewer_url(edge_url, token, bbox=city)}",
            "  the same data over HTTP:",
            f"    curl -H 'Authorization: Bearer {token}' \\",
            f"      '{edge_url}/v1/admin/trips?state=live&page_size=5'",
            "  over gRPC:",
            f"    .venv/bin/grpcurl -plaintext 127.0.0.1:{trip} list",
            '    .venv/bin/grpcurl -plaintext -H "authorization: Bearer $(./run token --grpc)" \\',
            f'      -d \'{{"min_lat": {city.min_lat}, '
            f'"min_lng": {city.min_lng}, "max_lat": {city.max_lat}, "max_lng": {city.max_lng}, '
            f'"limit": 5}}\' \\',
            f"      127.0.0.1:{location} rideshare.location.v1.LocationService/DriversInArea",
            "  Ctrl-C stops the simulator, every service and the infrastructure.",
            "",
        ]
    )


@contextlib.asynccontextmanager
async def running_demo(*, token: str, stripe_api_base: str = "") -> AsyncIterator[None]:
    """The demo simulator runs while the block does; it stops (and is awaited) on exit.

    ``token``: an admin token for the banner's viewer URL and curl line."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request
    edge_url = f"http://127.0.0.1:{service_port('edge')}"
    cfg = demo_config(edge_url, stripe_api_base=stripe_api_base)
    stop = asyncio.Event()

    def started() -> None:
        print(demo_banner(edge_url, token, cfg.city), flush=True)

    async def simulate() -> None:
        try:
            summary = await run(cfg, stop=stop, on_started=started)
        except SimulationError as exc:
            print(f"demo: the simulator could not start: {exc}", flush=True)
            return
        except Exception as exc:  # one line for the operator, never a traceback
            logger.debug("the demo simulator failed", exc_info=True)
            print(f"demo: the simulator failed: {exc!r}", flush=True)
            return
        print(f"demo: invariants {'held' if summary['ok'] else 'BROKE'}", flush=True)

    task = asyncio.create_task(simulate(), name="demo-simulator")
    try:
        yield
    finally:
        print("stopping the simulator...", flush=True)
        stop.set()
        try:
            async with asyncio.timeout(30.0):
                await task
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
