"""The edge's settings, from ``RIDESHARE_*`` environment variables (see rideshare/settings.py)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from edge.clientaddr import Network, parse_networks
from rideshare.settings import (
    BIND_RETRY_S,
    EDGE_PORT,
    MIN_SECRET_LEN,
    SERVICE_PORTS,
    InfraUrls,
    SettingsError,
    data_dir_from_env,
    env_addresses,
    env_bool,
    env_float,
    env_int,
    env_str,
    load_infra_urls,
    load_internal_secret,
    load_secret_file,
    process_secret,
)

__all__ = [
    "MIN_SECRET_LEN",
    "UPSTREAM_NAMES",
    "EdgeSettings",
    "LoginLimits",
    "default_upstreams",
    "load_jwt_secret",
]

UPSTREAM_NAMES = ("rider", "driver", "trip", "location", "notification")
JWT_SECRET_FILE = "jwt-secret"


def available_cores() -> int:
    """The CPUs this process may run on (its affinity mask, which a container's cpuset
    narrows), the edge's default number of workers."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def default_upstreams() -> dict[str, str]:
    """Every upstream service at its default local address."""
    return {name: f"127.0.0.1:{SERVICE_PORTS[name][0]}" for name in UPSTREAM_NAMES}


@dataclass(frozen=True)
class LoginLimits:
    """Logins and signups allowed per client address and per phone number, checked before any
    password is hashed, and the lockout of a phone number after failed logins (edge/logins.py).

    Rates are per minute. A phone number that fails ``lockout_failures`` logins in a row (no
    more than ``failure_window_s`` apart) is locked for ``lockout_s``; each further failure
    after a lock doubles it, up to ``lockout_max_s``; a successful login clears the count.
    """

    logins_per_min_per_ip: float = 6.0
    login_burst_per_ip: int = 10
    logins_per_min_per_phone: float = 2.0
    login_burst_per_phone: int = 5
    lockout_failures: int = 5
    lockout_s: float = 60.0
    lockout_max_s: float = 900.0
    failure_window_s: float = 900.0
    signups_per_min_per_ip: float = 0.5
    signup_burst_per_ip: int = 5
    signups_per_min_per_phone: float = 0.1
    signup_burst_per_phone: int = 3

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LoginLimits:
        d = cls()

        def rate(name: str, default: float) -> float:
            return env_float(name, default, minimum=0.001, env=env)

        def count(name: str, default: int) -> int:
            return env_int(name, default, minimum=1, env=env)

        def seconds(name: str, default: float) -> float:
            return env_float(name, default, minimum=0.1, env=env)

        limits = cls(
            logins_per_min_per_ip=rate("RIDESHARE_LOGINS_PER_MIN_PER_IP", d.logins_per_min_per_ip),
            login_burst_per_ip=count("RIDESHARE_LOGIN_BURST_PER_IP", d.login_burst_per_ip),
            logins_per_min_per_phone=rate(
                "RIDESHARE_LOGINS_PER_MIN_PER_PHONE", d.logins_per_min_per_phone
            ),
            login_burst_per_phone=count("RIDESHARE_LOGIN_BURST_PER_PHONE", d.login_burst_per_phone),
            lockout_failures=count("RIDESHARE_LOGIN_LOCKOUT_FAILURES", d.lockout_failures),
            lockout_s=seconds("RIDESHARE_LOGIN_LOCKOUT_S", d.lockout_s),
            lockout_max_s=seconds("RIDESHARE_LOGIN_LOCKOUT_MAX_S", d.lockout_max_s),
            failure_window_s=seconds("RIDESHARE_LOGIN_FAILURE_WINDOW_S", d.failure_window_s),
            signups_per_min_per_ip=rate(
                "RIDESHARE_SIGNUPS_PER_MIN_PER_IP", d.signups_per_min_per_ip
            ),
            signup_burst_per_ip=count("RIDESHARE_SIGNUP_BURST_PER_IP", d.signup_burst_per_ip),
            signups_per_min_per_phone=rate(
                "RIDESHARE_SIGNUPS_PER_MIN_PER_PHONE", d.signups_per_min_per_phone
            ),
            signup_burst_per_phone=count(
                "RIDESHARE_SIGNUP_BURST_PER_PHONE", d.signup_burst_per_phone
            ),
        )
        if limits.lockout_max_s < limits.lockout_s:
            raise SettingsError(
                f"RIDESHARE_LOGIN_LOCKOUT_MAX_S is {limits.lockout_max_s}; "
                f"use at least RIDESHARE_LOGIN_LOCKOUT_S ({limits.lockout_s})"
            )
        return limits


@dataclass(frozen=True)
class EdgeSettings:
    """Everything one edge process needs; tests build it directly."""

    infra: InfraUrls
    jwt_secret: str = field(repr=False)
    # Signs the edge's calls to the services (rideshare/identity.py); never the apps' secret.
    internal_secret: str = field(default_factory=process_secret, repr=False)
    # name -> host:port of every service in UPSTREAM_NAMES; one left out is at its default
    upstreams: Mapping[str, str] = field(default_factory=default_upstreams)
    host: str = "127.0.0.1"
    port: int = EDGE_PORT
    # Processes serving the port (edge/workers.py); 1 is a single process, no parent.
    workers: int = field(default_factory=available_cores)
    # SO_REUSEPORT on the listening socket: set for each worker by the workers' parent.
    reuse_port: bool = False
    log_level: str = "INFO"
    shutdown_grace_s: float = 5.0
    bind_retry_s: float = BIND_RETRY_S
    token_ttl_s: int = 3600
    call_timeout_s: float = 3.0
    expensive_call_timeout_s: float = 8.0  # signups and logins (edge.upstreams.EXPENSIVE)
    breaker_failures: int = 5
    breaker_reset_s: float = 5.0
    rate_per_token: float = 20.0  # requests per second
    burst_per_token: int = 40
    rate_per_ip: float = 100.0
    burst_per_ip: int = 200
    idempotency_ttl_s: int = 24 * 3600
    ws_send_queue: int = 256
    ws_max_message_bytes: int = 4096
    ws_msgs_per_s: float = 20.0
    ws_msgs_burst: int = 40
    ws_ping_interval_s: float = 4.0
    # Proxies whose X-Forwarded-For names the client (edge/clientaddr.py); none by default.
    trusted_proxies: tuple[Network, ...] = ()
    max_body_bytes: int = 64 * 1024
    # Sockets one user may hold open on this process; a newer one closes the oldest.
    ws_max_per_user: int = 4
    # Frames over the message rate a socket may send (forgiven at one a second, edge/ws.py)
    # before it is closed with 1008.
    ws_flood_frames: int = 100
    # How long positions gather before they go to location as one batch: at 20 ms instead
    # of 5, the edge spent 14 % less CPU per position and location 40 % less, for 10 ms
    # more driver -> rider latency (docs/PERFORMANCE.md, "Edge").
    position_flush_s: float = 0.02
    position_buffer: int = 100_000
    # The map viewers' feed (edge/viewer_feed.py): frames a socket gets per second at most,
    # and drivers one snapshot or frame may carry.
    viewer_frames_per_s: float = 2.0
    viewer_max_drivers: int = 5000
    logins: LoginLimits = field(default_factory=LoginLimits)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.upstreams) - set(UPSTREAM_NAMES))
        if unknown:
            raise SettingsError(f"upstreams names unknown services {unknown}")
        object.__setattr__(self, "upstreams", {**default_upstreams(), **self.upstreams})
        # The edge connects as its own users on the infrastructure (InfraUrls.for_service).
        object.__setattr__(self, "infra", self.infra.for_service("edge"))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> EdgeSettings:
        """Read every setting; a bad value raises SettingsError naming the variable."""
        data_dir = data_dir_from_env(env)
        secret = env_str("RIDESHARE_JWT_SECRET", "", env=env)
        if secret and len(secret) < MIN_SECRET_LEN:
            raise SettingsError(
                f"RIDESHARE_JWT_SECRET is {len(secret)} characters; use at least {MIN_SECRET_LEN}"
            )
        try:
            trusted = parse_networks(env_str("RIDESHARE_TRUSTED_PROXIES", "", env=env))
        except ValueError as exc:
            raise SettingsError(f"RIDESHARE_TRUSTED_PROXIES: {exc}") from None
        upstreams = {
            name: env_addresses(f"RIDESHARE_{name.upper()}_ADDR", default, env=env)
            for name, default in default_upstreams().items()
        }
        return cls(
            infra=load_infra_urls(data_dir, env=env),
            jwt_secret=secret or load_jwt_secret(data_dir),
            internal_secret=load_internal_secret(data_dir, env=env),
            upstreams=upstreams,
            host=env_str("RIDESHARE_EDGE_HOST", "127.0.0.1", env=env),
            port=env_int("RIDESHARE_EDGE_PORT", EDGE_PORT, minimum=0, maximum=65535, env=env),
            workers=env_int(
                "RIDESHARE_EDGE_WORKERS", available_cores(), minimum=1, maximum=256, env=env
            ),
            reuse_port=env_bool("RIDESHARE_EDGE_REUSE_PORT", False, env=env),
            log_level=env_str("RIDESHARE_LOG_LEVEL", "INFO", env=env).upper(),
            shutdown_grace_s=env_float("RIDESHARE_SHUTDOWN_GRACE_S", 5.0, minimum=0.0, env=env),
            bind_retry_s=env_float("RIDESHARE_BIND_RETRY_S", BIND_RETRY_S, minimum=0.0, env=env),
            token_ttl_s=env_int("RIDESHARE_JWT_TTL_S", 3600, minimum=60, env=env),
            call_timeout_s=env_float("RIDESHARE_EDGE_CALL_TIMEOUT_S", 3.0, minimum=0.05, env=env),
            expensive_call_timeout_s=env_float(
                "RIDESHARE_EDGE_EXPENSIVE_CALL_TIMEOUT_S", 8.0, minimum=0.05, env=env
            ),
            breaker_failures=env_int("RIDESHARE_EDGE_BREAKER_FAILURES", 5, minimum=1, env=env),
            breaker_reset_s=env_float("RIDESHARE_EDGE_BREAKER_RESET_S", 5.0, minimum=0.1, env=env),
            rate_per_token=env_float("RIDESHARE_RATE_PER_TOKEN", 20.0, minimum=0.1, env=env),
            burst_per_token=env_int("RIDESHARE_BURST_PER_TOKEN", 40, minimum=1, env=env),
            rate_per_ip=env_float("RIDESHARE_RATE_PER_IP", 100.0, minimum=0.1, env=env),
            burst_per_ip=env_int("RIDESHARE_BURST_PER_IP", 200, minimum=1, env=env),
            ws_send_queue=env_int("RIDESHARE_WS_SEND_QUEUE", 256, minimum=8, env=env),
            ws_msgs_per_s=env_float("RIDESHARE_WS_MSGS_PER_S", 20.0, minimum=0.1, env=env),
            ws_msgs_burst=env_int("RIDESHARE_WS_MSGS_BURST", 40, minimum=1, env=env),
            ws_ping_interval_s=env_float("RIDESHARE_WS_PING_S", 4.0, minimum=0.05, env=env),
            trusted_proxies=trusted,
            max_body_bytes=env_int("RIDESHARE_MAX_BODY_BYTES", 64 * 1024, minimum=1024, env=env),
            ws_max_per_user=env_int("RIDESHARE_WS_MAX_PER_USER", 4, minimum=1, env=env),
            ws_flood_frames=env_int("RIDESHARE_WS_FLOOD_FRAMES", 100, minimum=1, env=env),
            position_flush_s=env_float(
                "RIDESHARE_POSITION_FLUSH_S", 0.02, minimum=0.001, maximum=1.0, env=env
            ),
            viewer_frames_per_s=env_float(
                "RIDESHARE_VIEWER_FRAMES_PER_S", 2.0, minimum=0.1, maximum=50.0, env=env
            ),
            viewer_max_drivers=env_int(
                "RIDESHARE_VIEWER_MAX_DRIVERS", 5000, minimum=1, maximum=10_000, env=env
            ),
            logins=LoginLimits.from_env(env),
        )


def load_jwt_secret(data_dir: Path) -> str:
    """The secret in ``<data_dir>/jwt-secret``, created (mode 0600) with a random one once."""
    return load_secret_file(data_dir / JWT_SECRET_FILE, min_len=MIN_SECRET_LEN)
