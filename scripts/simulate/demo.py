"""The simulator inside ``rideshare up --demo``: a small city that runs until Ctrl-C, and a
banner with the viewer URL (an admin token minted the way ``python -m edge.token`` does)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from edge.auth import issue_token
from edge.settings import MIN_SECRET_LEN, load_jwt_secret
from rideshare.settings import SettingsError, env_str
from rideshare.supervisor import service_port
from scripts.simulate.city import BERLIN, BBox
from scripts.simulate.config import SimConfig
from scripts.simulate.runner import SimulationError, run

__all__ = ["admin_token", "demo_banner", "demo_config", "running_demo"]

logger = logging.getLogger(__name__)

TOKEN_TTL_S = 12 * 3600


def demo_config(edge_url: str) -> SimConfig:
    """50 drivers and 20 riders in central Berlin; a ride takes about 20-40 s."""
    return SimConfig(
        edge_url=edge_url,
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


def admin_token(data_dir: Path) -> str:
    """An admin token signed with the edge's secret (RIDESHARE_JWT_SECRET or
    ``<data_dir>/jwt-secret``), as ``python -m edge.token --role admin`` prints."""
    secret = env_str("RIDESHARE_JWT_SECRET", "")
    if secret and len(secret) < MIN_SECRET_LEN:
        raise SettingsError(f"RIDESHARE_JWT_SECRET is shorter than {MIN_SECRET_LEN}")
    secret = secret or load_jwt_secret(data_dir)
    return issue_token(secret, sub=f"admin-{uuid.uuid4()}", role="admin", ttl_s=TOKEN_TTL_S)


def demo_banner(edge_url: str, token: str, city: BBox) -> str:
    trip, location = (service_port(n) for n in ("trip", "location"))
    return "\n".join(
        [
            "",
            "demo: 50 simulated drivers and 20 riders are riding around central Berlin.",
            "  live map (admin token, valid 12 h):",
            f"    {edge_url}/viewer?bbox={city}#token={token}",
            "  the same data over HTTP:",
            f"    curl -H 'Authorization: Bearer {token}' \\",
            f"      '{edge_url}/v1/admin/trips?state=live&page_size=5'",
            "  over gRPC:",
            f"    .venv/bin/grpcurl -plaintext 127.0.0.1:{trip} list",
            f'    .venv/bin/grpcurl -plaintext -d \'{{"min_lat": {city.min_lat}, '
            f'"min_lng": {city.min_lng}, "max_lat": {city.max_lat}, "max_lng": {city.max_lng}, '
            f'"limit": 5}}\' \\',
            f"      127.0.0.1:{location} rideshare.location.v1.LocationService/DriversInArea",
            "  Ctrl-C stops the simulator, every service and the infrastructure.",
            "",
        ]
    )


@contextlib.asynccontextmanager
async def running_demo(data_dir: Path) -> AsyncIterator[None]:
    """The demo simulator runs while the block does; it stops (and is awaited) on exit."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request
    edge_url = f"http://127.0.0.1:{service_port('edge')}"
    cfg = demo_config(edge_url)
    stop = asyncio.Event()
    token = admin_token(data_dir)

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
