"""The edge as N worker processes on one port, and the parent that keeps them running.

``python -m edge`` with ``RIDESHARE_EDGE_WORKERS`` above 1 (the default: one per core) runs
:func:`serve_workers`, a small parent with no sockets of its own to serve: it reserves the
port, starts each worker as ``python -m edge`` with one worker and ``SO_REUSEPORT``
(``RIDESHARE_EDGE_WORKERS=1``, ``RIDESHARE_EDGE_REUSE_PORT=true``), and the kernel spreads
new connections over the workers' listening sockets. One event loop per core: the edge's
work is per-message CPU (docs/PERFORMANCE.md), and one process uses one core.

What the supervisor sees (rideshare/supervisor.py): one process, the parent. ``rideshare
status`` shows its pid; the health probe (GET /healthz) reaches whichever worker the kernel
picks; ``kill -9`` of the parent takes the workers with it (each dies with its parent) and
the supervisor starts a new edge. A worker that exits, or whose event loop has not written
its heartbeat for ``HUNG_AFTER_S`` (frozen, stuck), is (killed and) started again by the
parent after a backoff; the other workers keep serving the port meanwhile, and the
connections queued on the lost worker are reset (clients reconnect).

Reserving the port: the parent binds it with ``SO_REUSEPORT`` (bound, never listening, so it
is given no connections) and keeps it until it exits, so the port stays the edge's while
every worker restarts, and a port taken by another program is found and reported as a
single edge would (rideshare/ports.py). A process of the same user that also sets
``SO_REUSEPORT`` could join the port: only the edge's workers do.

What is per worker, and what is shared (README, "Edge workers"): each worker subscribes on
NATS to what its own sockets need (every trip event, the notifications of its users, the
positions of the drivers its riders watch, the viewers' feed), so a rider sees its driver
whichever workers hold the two sockets; rate buckets, login limits, idempotency keys and
pending offers live in Valkey; the per-user socket cap counts per worker. Metrics: the
workers write prometheus-client's multiprocess files into one directory, and /metrics on
any worker serves the sum over all of them (edge/metrics.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Mapping

from prometheus_client import multiprocess

from edge.settings import EdgeSettings
from rideshare.infra import _die_with_parent
from rideshare.lifecycle import stop_on_signals
from rideshare.ports import bind_port

__all__ = ["HEARTBEAT_FD_ENV", "heartbeat", "serve_workers"]

logger = logging.getLogger(__name__)

HEARTBEAT_FD_ENV = "RIDESHARE_EDGE_HEARTBEAT_FD"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
HEARTBEAT_S = 1.0
HUNG_AFTER_S = 15.0
# A worker's first heartbeat comes after its start (imports, connecting to Valkey and NATS).
START_ALLOWANCE_S = 60.0
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 10.0
STABLE_AFTER_S = 30.0


async def heartbeat(fd: int) -> None:
    """Write one byte to ``fd`` every HEARTBEAT_S from this event loop, until cancelled: a
    loop that stalls stops the heartbeat, and the parent restarts the worker."""
    os.set_blocking(fd, False)
    while True:
        try:
            os.write(fd, b".")
        except BlockingIOError:  # the parent reads late: skip a beat
            pass
        except BrokenPipeError:  # the parent is gone; its SIGTERM stops this worker
            return
        await asyncio.sleep(HEARTBEAT_S)


async def serve_workers(settings: EdgeSettings) -> None:
    """Run ``settings.workers`` workers on ``settings.host:settings.port`` until SIGTERM or
    SIGINT, then stop them (each closes its sockets with 1001 and drains, as one edge)."""
    stop = asyncio.Event()
    stop_on_signals(stop)
    reserved = await bind_port(
        settings.host, settings.port, retry_s=settings.bind_retry_s, reuse_port=True
    )
    port = reserved[0].getsockname()[1]
    own_dir = MULTIPROC_ENV not in os.environ
    metrics_dir = os.environ.get(MULTIPROC_ENV) or tempfile.mkdtemp(prefix="rideshare-edge-")
    env = {
        **os.environ,
        "RIDESHARE_EDGE_WORKERS": "1",
        "RIDESHARE_EDGE_REUSE_PORT": "true",
        "RIDESHARE_EDGE_PORT": str(port),
        MULTIPROC_ENV: metrics_dir,
    }
    logger.info("edge: %d workers on %s:%d", settings.workers, settings.host, port)
    try:
        async with asyncio.TaskGroup() as group:
            for index in range(settings.workers):
                group.create_task(
                    _keep_worker(index, env, metrics_dir, settings.shutdown_grace_s, stop)
                )
    finally:
        for sock in reserved:
            sock.close()
        if own_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


async def _keep_worker(
    index: int, env: Mapping[str, str], metrics_dir: str, grace_s: float, stop: asyncio.Event
) -> None:
    """Keep worker ``index`` running until ``stop``; then stop it."""
    failures = 0
    while not stop.is_set():
        started = time.monotonic()
        code = await _run_worker(index, env, grace_s, stop)
        _forget_gauges(code.pid, metrics_dir)
        if stop.is_set():
            return
        failures = 1 if time.monotonic() - started >= STABLE_AFTER_S else failures + 1
        delay = min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2 ** (failures - 1))
        logger.warning(
            "edge worker %d (pid %d) %s; starting it again in %.1f s",
            index,
            code.pid,
            code.describe(),
            delay,
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await stop.wait()


class _Exit:
    def __init__(self, pid: int, returncode: int, *, hung: bool) -> None:
        self.pid = pid
        self.returncode = returncode
        self.hung = hung

    def describe(self) -> str:
        if self.hung:
            return f"stopped its heartbeat for {HUNG_AFTER_S:.0f} s and was killed"
        if self.returncode < 0:
            try:
                return f"was killed by {signal.Signals(-self.returncode).name}"
            except ValueError:
                return f"was killed by signal {-self.returncode}"
        return f"exited with code {self.returncode}"


async def _run_worker(
    index: int, env: Mapping[str, str], grace_s: float, stop: asyncio.Event
) -> _Exit:
    """One copy of worker ``index``, from start to exit (killed when its heartbeat stops,
    stopped with SIGTERM when ``stop`` is set)."""
    read_fd, write_fd = os.pipe()
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edge",
            stdin=asyncio.subprocess.DEVNULL,
            env={**env, HEARTBEAT_FD_ENV: str(write_fd)},
            pass_fds=(write_fd,),
            preexec_fn=_die_with_parent,
        )
    finally:
        os.close(write_fd)
    loop = asyncio.get_running_loop()
    last_beat = loop.time() + START_ALLOWANCE_S - HUNG_AFTER_S

    def on_beat() -> None:
        nonlocal last_beat
        try:
            data = os.read(read_fd, 4096)
        except BlockingIOError:
            return
        if data:
            last_beat = loop.time()
        else:  # the worker's end closed: it is exiting
            loop.remove_reader(read_fd)

    os.set_blocking(read_fd, False)
    loop.add_reader(read_fd, on_beat)
    hung = False
    try:
        waiting = asyncio.ensure_future(process.wait())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not waiting.done():
                await asyncio.wait({waiting, stopping}, timeout=HEARTBEAT_S)
                if stopping.done():
                    break
                if loop.time() - last_beat > HUNG_AFTER_S and not waiting.done():
                    hung = True
                    _signal(process.pid, signal.SIGKILL)
                    await waiting
        finally:
            stopping.cancel()
        if not waiting.done():
            _signal(process.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(grace_s + 5.0):
                    await asyncio.shield(waiting)
            except TimeoutError:
                logger.warning("edge worker %d did not stop in time; killing it", index)
                _signal(process.pid, signal.SIGKILL)
                await waiting
    finally:
        loop.remove_reader(read_fd)
        os.close(read_fd)
    return _Exit(process.pid, waiting.result(), hung=hung)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _forget_gauges(pid: int, metrics_dir: str) -> None:
    """A gone worker's live gauges (its open sockets) leave the sum; its counters stay."""
    with contextlib.suppress(OSError):
        multiprocess.mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]
