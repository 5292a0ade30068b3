"""``rideshare simulate`` / ``python -m rideshare.simulate``: the command line of the simulator.

Exit status: 0 when every invariant held, 1 when one broke, 2 when the run could not start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from rideshare.settings import EDGE_PORT, env_int
from rideshare.simulate.cards import default_stripe_api_base
from rideshare.simulate.city import BERLIN, BBox
from rideshare.simulate.config import SimConfig, View
from rideshare.simulate.runner import SimulationError, run

__all__ = ["add_arguments", "config_from_args", "main"]


def default_edge_url() -> str:
    port = env_int("RIDESHARE_EDGE_PORT", EDGE_PORT, minimum=1, maximum=65535)
    return f"http://127.0.0.1:{port}"


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    d = SimConfig(edge_url="")
    p.add_argument(
        "--edge-url", default=None, help="default: http://127.0.0.1:$RIDESHARE_EDGE_PORT"
    )
    p.add_argument("--drivers", type=int, default=d.drivers, help="simulated driver apps")
    p.add_argument("--riders", type=int, default=d.riders, help="simulated rider apps")
    p.add_argument(
        "--rate",
        type=float,
        default=d.rate,
        help="trip requests per second over all riders (Poisson; a rider on a trip waits)",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=d.duration_s,
        help="seconds of requests (0: until Ctrl-C)",
    )
    p.add_argument(
        "--drain",
        type=float,
        default=d.drain_s,
        help="seconds to let live trips finish after the duration",
    )
    p.add_argument(
        "--speedup",
        type=float,
        default=d.speedup,
        help="simulated seconds per second (20: a 10-minute ride takes 30 s)",
    )
    p.add_argument("--accept-prob", type=float, default=d.accept_prob)
    p.add_argument("--cancel-prob", type=float, default=d.cancel_prob)
    p.add_argument("--seed", type=int, default=d.seed, help="seeds every random choice")
    p.add_argument(
        "--city",
        type=BBox.parse,
        default=BERLIN,
        help=f"minLat,minLng,maxLat,maxLng (default {BERLIN})",
    )
    p.add_argument(
        "--min-report-s",
        type=float,
        default=d.min_report_s,
        help="shortest wall interval between one driver's position reports",
    )
    p.add_argument(
        "--think-max-s",
        type=float,
        default=d.think_max_s,
        help="cap on a driver's time to answer an offer (2-8 simulated s); 0 for load tests",
    )
    p.add_argument(
        "--dispatch-wait",
        type=float,
        default=d.dispatch_wait_s,
        help="seconds a trip may plausibly wait for a driver",
    )
    p.add_argument("--signup-concurrency", type=int, default=d.signup_concurrency)
    p.add_argument("--json-out", type=Path, default=None, help="write the final summary here")
    p.add_argument("--quiet", action="store_true", help="no live view and no final table")
    p.add_argument(
        "--view",
        choices=("live", "lines", "none"),
        default=None,
        help="live: redraw in place (default on a terminal); lines: a progress line every 5 s",
    )
    return p


def config_from_args(args: argparse.Namespace) -> SimConfig:
    view: View = "none" if args.quiet else args.view or ("live" if sys.stdout.isatty() else "lines")
    return SimConfig(
        edge_url=(args.edge_url or default_edge_url()).rstrip("/"),
        stripe_api_base=default_stripe_api_base(),
        drivers=args.drivers,
        riders=args.riders,
        rate=args.rate,
        duration_s=args.duration,
        drain_s=args.drain,
        speedup=args.speedup,
        accept_prob=args.accept_prob,
        cancel_prob=args.cancel_prob,
        seed=args.seed,
        city=args.city,
        min_report_s=args.min_report_s,
        think_max_s=args.think_max_s,
        dispatch_wait_s=args.dispatch_wait,
        signup_concurrency=args.signup_concurrency,
        json_out=args.json_out,
        view=view,
    )


async def _main(cfg: SimConfig) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    summary = await run(cfg, stop=stop)
    return 0 if summary["ok"] else 1


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m rideshare.simulate") -> int:
    parser = add_arguments(argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0]))
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        return asyncio.run(_main(cfg))
    except SimulationError as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            print("simulate: interrupted", file=sys.stderr)
        return 130
