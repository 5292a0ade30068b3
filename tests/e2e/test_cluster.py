"""The cluster profile under faults (scripts/chaos.py --cluster), as its own CI step:
``rideshare up --cluster`` with one simulator on each edge copy, while the NATS stream leader,
a Valkey master, the PostgreSQL primary (then failed over to the standby), one copy of each
service and one edge copy are killed one at a time; then the stores are checked directly.

    ./run test -m cluster -s      # prints the time each layer took to recover
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.chaos import CLUSTER_FAULTS

pytestmark = pytest.mark.cluster


def test_every_layer_loses_a_node_mid_ride_and_the_stores_stay_consistent(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    argv = [
        sys.executable, "-m", "scripts.chaos", "--cluster",
        "--seed", "11",
        "--duration", "90",
        "--drain", "45",
        "--pause", "2",
        "--data-dir", str(tmp_path / "data"),
        "--json-out", str(out),
    ]  # fmt: skip
    run = subprocess.run(argv, capture_output=True, text=True, timeout=1200, check=False)
    print(run.stdout)  # the per-fault recovery times, shown with -s or on failure
    assert run.returncode in (0, 1), run.stderr
    result = json.loads(out.read_text())

    assert [(f["action"], f["target"]) for f in result["faults"]] == list(CLUSTER_FAULTS)
    assert all(f["healthy_after_s"] is not None for f in result["faults"])
    # The servers' faults hit a node in the role named, and its layer carried on.
    hit = {f["target"]: f for f in result["faults"]}
    assert hit["nats:leader"]["process"].startswith("nats-")
    assert hit["valkey:master"]["process"].startswith("valkey-")
    for target in ("nats:leader", "valkey:master", "postgres"):
        assert hit[target]["taken_over_after_s"] is not None
    for check, found in result["checks"].items():
        assert found == [], f"{check}: {found}"
    assert result["ok"] and run.returncode == 0
    assert result["trips_requested"] >= 8  # fewer on a busy machine: apps wait out faults
    assert result["trips_completed"] >= 1
