"""python -m location: settings from the environment -> logging -> the service."""

from location.app import running
from rideshare.runtime import run_service

if __name__ == "__main__":
    run_service("location", running)
