"""python -m rider: settings from the environment -> logging -> the service."""

from rider.app import running
from rideshare.runtime import run_service

if __name__ == "__main__":
    run_service("rider", running)
