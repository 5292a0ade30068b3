"""python -m driver: settings from the environment -> logging -> the service."""

from driver.app import running
from rideshare.runtime import run_service

if __name__ == "__main__":
    run_service("driver", running)
