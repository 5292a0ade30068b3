"""Simulated mobile clients of the edge: driver and rider apps over HTTP + WebSocket only.

    python -m rideshare.simulate --drivers 50 --riders 20 --speedup 15 --duration 120
    rideshare simulate ...          (the same, as a console command)

A driver app signs up, adds a vehicle, goes online, streams positions over /v1/ws/driver
while it moves (city.py: random waypoints, city speeds, time compression), answers offers,
drives the trip through arrive/start/complete and rates the rider. A rider app requests
trips at Poisson times (fare estimate, then POST /v1/trips with an Idempotency-Key), watches
its driver on /v1/ws/rider, sometimes cancels and rates the driver. stats.py measures,
invariants.py checks, runner.py runs it all; the exit status says whether an invariant broke.
"""

from rideshare.simulate.config import SimConfig
from rideshare.simulate.runner import SimulationError, run

__all__ = ["SimConfig", "SimulationError", "run"]
