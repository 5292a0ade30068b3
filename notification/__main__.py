"""python -m notification: settings from the environment -> logging -> the service."""

from notification.app import running
from rideshare.runtime import run_service

if __name__ == "__main__":
    run_service("notification", running)
