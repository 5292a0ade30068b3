"""python -m trip: settings from the environment -> logging -> the service."""

from rideshare.runtime import run_service
from trip.app import running

if __name__ == "__main__":
    run_service("trip", running)
