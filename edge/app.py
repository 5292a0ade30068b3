"""Wiring of the edge: Redis, NATS, the upstream channels, the live hub, the position batcher
and the HTTP server (uvicorn, run in-process so tests and ``python -m edge`` share the code).

Shutdown order, from the outside in: every WebSocket is closed with 1001 and uvicorn stops
accepting and finishes in-flight requests (grace period); then the hub and the batcher stop
(the batcher flushes and closes its stream); then the channels close, NATS drains and Redis
closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from edge.context import EdgeContext
from edge.errors import install_error_handlers
from edge.idempotency import IdempotencyStore
from edge.live import LiveHub
from edge.logins import LoginGuard
from edge.metrics import exposition
from edge.middleware import EdgeMiddleware, quiet_denied_handshakes
from edge.positions import PositionBatcher
from edge.ratelimit import RateLimiter
from edge.routes import admin, auth, drivers, payments, riders, trips
from edge.settings import EdgeSettings
from edge.upstreams import Upstreams
from edge.usercap import UserSockets
from edge.viewer_feed import ViewerFeed
from edge.viewer_feed import router as viewer_router
from edge.ws import router as ws_router
from rideshare import bus
from rideshare.identity import TokenSigner
from rideshare.ports import bind_port
from rideshare.redis_client import open_redis

__all__ = ["EdgeServer", "create_app", "running"]

logger = logging.getLogger(__name__)

_TOKEN_IN_QUERY = re.compile(r"(token=)[^&\s\"']+")


def redact_tokens(record: logging.LogRecord) -> bool:
    """uvicorn logs each WebSocket's path with its query string, which may hold ?token=:
    a bearer token must never reach a log."""
    if record.args:
        record.msg = record.getMessage()
        record.args = None
    if isinstance(record.msg, str) and "token=" in record.msg:
        record.msg = _TOKEN_IN_QUERY.sub(r"\1<redacted>", record.msg)
    return True


HEALTH_TIMEOUT_S = 1.0
# Positions reach sockets through bounded queues, so the transport's own limit only has to
# stop abuse; edge/wire.py enforces the per-message limit with an error frame.
WS_TRANSPORT_MAX_BYTES = 64 * 1024


def create_app(ctx: EdgeContext) -> FastAPI:
    """The ASGI app over an open context."""
    app = FastAPI(
        title="Rideshare edge API",
        version="1.0.0",
        description=(
            "HTTP API for the rider and driver apps. Errors are "
            '{"error": {"code", "message"}}; 503 and 429 carry Retry-After.\n\n'
            "WebSockets: /v1/ws/driver, /v1/ws/rider and /v1/ws/viewer (the live map of a "
            "bbox, admin), authenticated by ?token=<jwt> or a "
            'first message {"type": "auth", "token": "<jwt>"}; one JSON object per text frame, '
            "message formats in edge/wire.py.\n\n"
            "Query formats: coordinates are decimal degrees; a bounding box is "
            "bbox=minLat,minLng,maxLat,maxLng (south-west corner, then north-east); lists "
            "accept a repeated parameter or comma-separated values; paging is page_size + "
            "page_token (pass next_page_token back until it is null).\n\n"
            "Live map for operators: /viewer#token=<admin jwt> (or ?token=, kept in the tab's "
            "session storage), with ?bbox=minLat,minLng,maxLat,maxLng for the area shown "
            "(default -85,-180,85,180)."
        ),
    )
    app.state.ctx = ctx
    install_error_handlers(app)
    app.add_middleware(EdgeMiddleware)
    for module in (auth, riders, drivers, trips, payments, admin):
        app.include_router(module.router)
    app.include_router(ws_router)
    app.include_router(viewer_router)

    @app.get("/healthz", tags=["ops"], response_model=dict[str, Any])
    async def healthz() -> JSONResponse:
        """200 when Redis, NATS and every upstream service answer; 503 with details if not."""
        detail: dict[str, Any] = {"nats": ctx.nc.is_connected}
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_S):
                await ctx.redis.ping()
            detail["redis"] = True
        except Exception as exc:  # any failure is "not healthy", and said so in the log
            logger.warning("/healthz: Redis did not answer: %r", exc)
            detail["redis"] = False
        detail["upstreams"] = await ctx.upstreams.health()
        ok = (
            detail["nats"]
            and detail["redis"]
            and all(u["serving"] for u in detail["upstreams"].values())
        )
        detail["status"] = "ok" if ok else "degraded"
        return JSONResponse(detail, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics of the edge (every worker's, summed: edge/metrics.py)."""
        return Response(exposition(), media_type=CONTENT_TYPE_LATEST)

    viewer = resources.files("edge") / "viewer"

    @app.get("/viewer", include_in_schema=False)
    async def viewer_page() -> HTMLResponse:
        return HTMLResponse(viewer.joinpath("viewer.html").read_text())

    @app.get("/viewer/viewer.js", include_in_schema=False)
    async def viewer_js() -> Response:
        return Response(
            viewer.joinpath("viewer.js").read_text(), media_type="application/javascript"
        )

    return app


@dataclass
class EdgeServer:
    app: FastAPI
    ctx: EdgeContext
    server: uvicorn.Server
    task: asyncio.Task[None]

    @property
    def port(self) -> int:
        sockets = self.server.servers[0].sockets
        return int(sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def finished(self) -> None:
        """Returns when uvicorn stopped serving (SIGTERM/SIGINT in ``python -m edge``)."""
        await asyncio.shield(self.task)


@contextlib.asynccontextmanager
async def running(settings: EdgeSettings) -> AsyncIterator[EdgeServer]:
    """The edge, serving on ``settings.host:settings.port`` (0 = a free port) until exit.

    A taken port is retried for ``settings.bind_retry_s``, then
    :class:`rideshare.ports.PortInUseError`."""
    stop = asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        redis = open_redis(settings.infra.redis_url, max_connections=256)
        stack.push_async_callback(redis.aclose)
        nc = await bus.connect(settings.infra.nats_url, name="edge")
        stack.push_async_callback(nc.drain)
        upstreams = Upstreams(
            settings.upstreams,
            timeout_s=settings.call_timeout_s,
            expensive_timeout_s=settings.expensive_call_timeout_s,
            failures=settings.breaker_failures,
            reset_s=settings.breaker_reset_s,
            signer=TokenSigner(settings.internal_secret, "edge"),
        )
        stack.push_async_callback(upstreams.close)
        hub = LiveHub(
            nc,
            trip=upstreams.trip,
            location=upstreams.location,
            redis=redis,
            ping_interval_s=settings.ws_ping_interval_s,
        )
        batcher = PositionBatcher(
            upstreams.location,
            flush_s=settings.position_flush_s,
            max_buffer=settings.position_buffer,
        )
        limiter = RateLimiter(redis)
        ctx = EdgeContext(
            settings=settings,
            upstreams=upstreams,
            redis=redis,
            nc=nc,
            limiter=limiter,
            logins=LoginGuard(redis, limiter, settings.logins),
            idempotency=IdempotencyStore(redis, ttl_s=settings.idempotency_ttl_s),
            hub=hub,
            positions=batcher,
            user_sockets=UserSockets(redis, max_per_user=settings.ws_max_per_user),
        )
        app = create_app(ctx)
        app.state.viewers = viewers = ViewerFeed(nc, upstreams.location)
        # Bound here, so a taken port is waited out (and reported) as the gRPC services do,
        # and uvicorn serves on these very sockets: nothing can take the port in between.
        # Before the workers' TaskGroup, which would wrap a PortInUseError in a group.
        sockets = await bind_port(
            settings.host,
            settings.port,
            retry_s=settings.bind_retry_s,
            reuse_port=settings.reuse_port,
        )
        for sock in sockets:
            stack.callback(sock.close)  # uvicorn closes them too; a second close is a no-op
        workers = await stack.enter_async_context(asyncio.TaskGroup())
        stack.callback(stop.set)  # runs before the group joins: the workers see stop
        workers.create_task(hub.run(stop), name="live-hub")
        workers.create_task(batcher.run(stop), name="position-batcher")
        workers.create_task(ctx.user_sockets.run(stop), name="user-sockets")
        workers.create_task(viewers.run(stop), name="viewer-feed")
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            lifespan="off",
            # X-Forwarded-For is read by the edge's middleware, from trusted proxies only
            # (RIDESHARE_TRUSTED_PROXIES); uvicorn's own handling would trust 127.0.0.1.
            proxy_headers=False,
            forwarded_allow_ips=[],
            ws_max_size=WS_TRANSPORT_MAX_BYTES,
            ws_ping_interval=None,  # the app sends its own JSON pings (FIELD-NOTES: 4 s)
            # websockets' sans-I/O protocol, named rather than left to "auto"; no
            # permessage-deflate: positions are ~150-byte JSON frames, compressing them costs
            # CPU per message and a zlib context per socket (docs/PERFORMANCE.md).
            ws="websockets-sansio",
            ws_per_message_deflate=False,
            timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_s)),
        )
        server = uvicorn.Server(config)
        logging.getLogger("uvicorn.error").addFilter(redact_tokens)
        logging.getLogger("uvicorn.error").addFilter(quiet_denied_handshakes)
        task = asyncio.create_task(server.serve(sockets=sockets), name="uvicorn")
        try:
            async with asyncio.timeout(10.0):
                while not server.started:
                    if task.done():
                        await task
                        raise RuntimeError("the edge's HTTP server did not start")
                    await asyncio.sleep(0.01)
            edge = EdgeServer(app, ctx, server, task)
            logger.info("edge serving on %s", edge.url)
            if settings.trusted_proxies:
                logger.info(
                    "client addresses from X-Forwarded-For of %s",
                    ", ".join(str(n) for n in settings.trusted_proxies),
                )
            yield edge
        finally:
            stop.set()  # the hub and the viewer feed close every WebSocket with 1001
            server.should_exit = True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(settings.shutdown_grace_s + 2.0):
                    await task
            if not task.done():
                task.cancel()
