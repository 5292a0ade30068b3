"""Settings from ``RIDESHARE_*`` environment variables: typed, immutable, validated once.

Every process builds one frozen settings object at start and passes it down; tests build
them directly. A bad value fails fast with a message naming the variable and the value.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from rideshare.addresses import channel_target
from rideshare.secrets_dir import secret_file

__all__ = [
    "BIND_RETRY_S",
    "DEFAULT_DATA_DIR",
    "INFRA_FILE",
    "INTERNAL_SECRET_ENV",
    "INTERNAL_SECRET_FILE",
    "MIN_SECRET_LEN",
    "ONE_ADDRESS_LOGIN_LIMITS",
    "SERVICE_PORTS",
    "InfraUrls",
    "ServiceSettings",
    "SettingsError",
    "configured_ports",
    "default_kdf_concurrency",
    "env_addresses",
    "env_bool",
    "env_float",
    "env_int",
    "env_str",
    "load_infra_urls",
    "load_internal_secret",
    "load_secret_file",
    "mask_url",
    "process_secret",
    "service_port",
    "service_settings",
]

DEFAULT_DATA_DIR = Path(".rideshare")
INFRA_FILE = "infra.json"

# gRPC port and Prometheus metrics port per service; each overridable by RIDESHARE_<SERVICE>_PORT
# and RIDESHARE_<SERVICE>_METRICS_PORT (README, Configuration).
SERVICE_PORTS: Mapping[str, tuple[int, int]] = {
    "rider": (50051, 9151),
    "driver": (50052, 9152),
    "trip": (50053, 9153),
    "location": (50054, 9154),
    "notification": (50055, 9155),
}
EDGE_PORT = 8080
# How long a server retries a taken port before it gives up (rideshare/ports.py says why).
BIND_RETRY_S = 20.0
# The edge's login and signup limits per client address, lifted: for a simulated city, a
# benchmark or a test whose phones all come from one address (README: "Logins and signups").
# The limits per phone number and the lockout stay.
ONE_ADDRESS_LOGIN_LIMITS: Mapping[str, str] = {
    "RIDESHARE_LOGINS_PER_MIN_PER_IP": "1000000",
    "RIDESHARE_LOGIN_BURST_PER_IP": "1000000",
    "RIDESHARE_SIGNUPS_PER_MIN_PER_IP": "1000000",
    "RIDESHARE_SIGNUP_BURST_PER_IP": "1000000",
}

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class SettingsError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


def _raw(env: Mapping[str, str] | None, name: str) -> str | None:
    value = (os.environ if env is None else env).get(name)
    return None if value is None or value.strip() == "" else value.strip()


def env_str(name: str, default: str, *, env: Mapping[str, str] | None = None) -> str:
    """The variable's value, or ``default`` when it is unset or blank."""
    value = _raw(env, name)
    return default if value is None else value


def env_addresses(name: str, default: str, *, env: Mapping[str, str] | None = None) -> str:
    """Where one service's copies are: ``host:port``, ``ip:port,ip:port`` or
    ``dns:///name:port`` (rideshare/addresses.py), checked now; empty stays empty."""
    value = env_str(name, default, env=env)
    if value.strip():
        try:
            channel_target(value)
        except ValueError as exc:
            raise SettingsError(f"{name}: {exc}") from None
    return value


def env_int(
    name: str,
    default: int,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """An integer variable, range-checked."""
    raw = _raw(env, name)
    if raw is None:
        value = default
    else:
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not an integer") from None
    _check_range(name, value, minimum, maximum)
    return value


def env_float(
    name: str,
    default: float,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    env: Mapping[str, str] | None = None,
) -> float:
    """A finite float variable, range-checked."""
    raw = _raw(env, name)
    if raw is None:
        value = default
    else:
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise SettingsError(f"{name}={raw!r} is not a finite number")
    _check_range(name, value, minimum, maximum)
    return value


def env_bool(name: str, default: bool, *, env: Mapping[str, str] | None = None) -> bool:
    """A strict boolean: 1/true/yes/on or 0/false/no/off, anything else is an error."""
    raw = _raw(env, name)
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean (use true/false, 1/0, yes/no, on/off)")


def _check_range(name: str, value: float, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and value < minimum:
        raise SettingsError(f"{name}={value} is below the minimum {minimum}")
    if maximum is not None and value > maximum:
        raise SettingsError(f"{name}={value} is above the maximum {maximum}")


# A password as a query parameter of a URL, or in a libpq keyword/value DSN (quoted or not).
_QUERY_PASSWORD = re.compile(r"(^|&)(password=)[^&]*")
_KEYWORD_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***``, for logs and reprs: in its user info,
    as a ``password=`` query parameter, or in a libpq keyword/value DSN (``host=a,b
    password=...``). Several hosts (``postgresql://u:p@a:5432,b:5432/db``) are fine, and so
    are several whole URLs separated by commas (a NATS server list)."""
    if "://" not in url:
        return _KEYWORD_PASSWORD.sub(r"\1***", url)
    if "," in url and url.count("://") > 1:
        return ",".join(mask_url(part) for part in url.split(","))
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    query = _QUERY_PASSWORD.sub(r"\1\2***", parts.query)
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))


@dataclass(frozen=True)
class InfraUrls:
    """Where the three stores are, and the users each service has on them. Passwords never
    show in repr().

    ``logins`` maps a server ("redis", "nats") to the password of each service's own user
    there (the user is named like the service; see rideshare/infra_users.py). It is filled
    for the embedded servers only: a server given from outside keeps its operator's users.
    """

    redis_url: str = field(repr=False)
    postgres_dsn: str = field(repr=False)
    nats_url: str = field(repr=False)
    # The payment provider's API (RIDESHARE_STRIPE_API_BASE): the embedded localstripe, or
    # empty when none was started or given (the rider service then refuses to start).
    stripe_api_base: str = ""
    # How many NATS nodes hold each message of the JetStream stream
    # (RIDESHARE_JETSTREAM_REPLICAS): 1 on a single server, 3 on a cluster.
    jetstream_replicas: int = 1
    logins: Mapping[str, Mapping[str, str]] = field(default_factory=dict, repr=False, compare=False)

    def __repr__(self) -> str:
        return (
            f"InfraUrls(redis_url={mask_url(self.redis_url)!r}, "
            f"postgres_dsn={mask_url(self.postgres_dsn)!r}, nats_url={mask_url(self.nats_url)!r}, "
            f"stripe_api_base={self.stripe_api_base!r}, "
            f"jetstream_replicas={self.jetstream_replicas})"
        )

    def for_service(self, name: str) -> InfraUrls:
        """These URLs as the service ``name`` uses them: on each server with ``logins``, as
        its own user, or as nobody when it has none there (it may not use that server). The
        result has no logins left to hand out; without logins, the URLs as they are."""
        if not self.logins:
            return self
        return InfraUrls(
            redis_url=_as_user(self.redis_url, name, self.logins.get("redis")),
            postgres_dsn=self.postgres_dsn,
            nats_url=_as_user(self.nats_url, name, self.logins.get("nats")),
            stripe_api_base=self.stripe_api_base,
            jetstream_replicas=self.jetstream_replicas,
        )

    def to_json(self) -> dict[str, object]:
        return {
            "redis_url": self.redis_url,
            "postgres_dsn": self.postgres_dsn,
            "nats_url": self.nats_url,
            "stripe_api_base": self.stripe_api_base,
            "jetstream_replicas": self.jetstream_replicas,
            "logins": {server: dict(users) for server, users in self.logins.items()},
        }


def _as_user(url: str, name: str, passwords: Mapping[str, str] | None) -> str:
    if passwords is None:
        return url
    password = passwords.get(name)
    parts = urlsplit(url)
    address = parts.netloc.rpartition("@")[2]
    netloc = f"{name}:{password}@{address}" if password else address
    return urlunsplit(parts._replace(netloc=netloc))


def data_dir_from_env(env: Mapping[str, str] | None = None) -> Path:
    return Path(env_str("RIDESHARE_DATA_DIR", str(DEFAULT_DATA_DIR), env=env))


def load_infra_urls(
    data_dir: Path | None = None, *, env: Mapping[str, str] | None = None
) -> InfraUrls:
    """URLs from ``RIDESHARE_REDIS_URL`` / ``_POSTGRES_DSN`` / ``_NATS_URL``; any that is unset
    comes from the infra file that ``rideshare infra up`` wrote into the data directory, with
    the services' logins on that server (a URL given in the environment wins, as is). The
    payment provider's ``RIDESHARE_STRIPE_API_BASE`` likewise, or the file's, or empty, and
    ``RIDESHARE_JETSTREAM_REPLICAS``, or the file's, or 1."""
    data_dir = data_dir if data_dir is not None else data_dir_from_env(env)
    given = {
        "redis_url": _raw(env, "RIDESHARE_REDIS_URL"),
        "postgres_dsn": _raw(env, "RIDESHARE_POSTGRES_DSN"),
        "nats_url": _raw(env, "RIDESHARE_NATS_URL"),
    }
    logins: dict[str, Mapping[str, str]] = {}
    if None in given.values():
        infra_file = data_dir / INFRA_FILE
        try:
            recorded = json.loads(infra_file.read_text())
        except FileNotFoundError:
            missing = [k for k, v in given.items() if v is None]
            raise SettingsError(
                f"no {', '.join(missing)} given (RIDESHARE_REDIS_URL, RIDESHARE_POSTGRES_DSN, "
                f"RIDESHARE_NATS_URL) and no {infra_file}: start `rideshare infra up` first"
            ) from None
        recorded_logins = recorded.get("logins") or {}
        for key, value in given.items():
            if value is None:
                given[key] = str(recorded[key])
                server = key.removesuffix("_url")
                if server in recorded_logins:
                    logins[server] = {str(k): str(v) for k, v in recorded_logins[server].items()}
    stripe_api_base = _raw(env, "RIDESHARE_STRIPE_API_BASE")
    if stripe_api_base is None:
        try:
            stripe_api_base = str(
                json.loads((data_dir / INFRA_FILE).read_text())["stripe_api_base"]
            )
        except (OSError, ValueError, KeyError):
            stripe_api_base = ""
    recorded_replicas = 1
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        recorded_replicas = int(
            json.loads((data_dir / INFRA_FILE).read_text())["jetstream_replicas"]
        )
    return InfraUrls(
        redis_url=str(given["redis_url"]),
        postgres_dsn=str(given["postgres_dsn"]),
        nats_url=str(given["nats_url"]),
        stripe_api_base=stripe_api_base,
        jetstream_replicas=env_int(
            "RIDESHARE_JETSTREAM_REPLICAS", recorded_replicas, minimum=1, maximum=5, env=env
        ),
        logins=logins,
    )


# --- per-install secrets -------------------------------------------------------------------

MIN_SECRET_LEN = 32
INTERNAL_SECRET_ENV = "RIDESHARE_INTERNAL_SECRET"
INTERNAL_SECRET_FILE = "internal-secret"


def load_secret_file(path: Path, *, min_len: int = MIN_SECRET_LEN) -> str:
    """The secret in ``path``, created (mode 0600, its directory 0700) with a random one the
    first time (rideshare.secrets_dir). SettingsError when it holds fewer than ``min_len``
    characters."""
    secret = secret_file(path.parent, path.name, 48)
    if len(secret) < min_len:
        raise SettingsError(f"{path} holds a secret shorter than {min_len} characters")
    return secret


def load_internal_secret(
    data_dir: Path | None = None, *, env: Mapping[str, str] | None = None
) -> str:
    """The secret of the install's service tokens (rideshare/identity.py):
    ``RIDESHARE_INTERNAL_SECRET``, else ``<data_dir>/internal-secret``, created (0600) with a
    random one on first use. SettingsError for a secret under 32 characters."""
    given = env_str(INTERNAL_SECRET_ENV, "", env=env)
    if given:
        if len(given) < MIN_SECRET_LEN:
            raise SettingsError(
                f"{INTERNAL_SECRET_ENV} is {len(given)} characters; use at least {MIN_SECRET_LEN}"
            )
        return given
    directory = data_dir if data_dir is not None else data_dir_from_env(env)
    return load_secret_file(directory / INTERNAL_SECRET_FILE)


@functools.cache
def process_secret() -> str:
    """This process's internal secret, from its environment (read once)."""
    return load_internal_secret()


@dataclass(frozen=True)
class ServiceSettings:
    """What every gRPC service process needs; a service adds its own settings beside it."""

    name: str
    infra: InfraUrls
    host: str = "127.0.0.1"
    grpc_port: int = 0
    metrics_port: int = 0  # 0: no metrics endpoint
    log_level: str = "INFO"
    shutdown_grace_s: float = 5.0
    db_pool_max: int = 10
    bind_retry_s: float = BIND_RETRY_S
    # Password hashing (rideshare.credentials.PasswordHasher): KDF runs at once, and how many
    # more may wait before a signup or login is refused with RESOURCE_EXHAUSTED.
    kdf_concurrency: int = field(default_factory=lambda: default_kdf_concurrency())
    kdf_queue: int = 32
    # Signs and checks the service tokens of internal calls (rideshare/identity.py).
    internal_secret: str = field(default_factory=lambda: process_secret(), repr=False)

    def __post_init__(self) -> None:
        # Whoever builds the settings hands over the infrastructure; the service connects
        # as its own users on it (InfraUrls.for_service).
        object.__setattr__(self, "infra", self.infra.for_service(self.name))


def service_port(name: str, env: Mapping[str, str] | None = None) -> int:
    """The port a service listens on: ``RIDESHARE_<NAME>_PORT`` in ``env`` (default: this
    process's environment) or the default port."""
    default = EDGE_PORT if name == "edge" else SERVICE_PORTS[name][0]
    return env_int(f"RIDESHARE_{name.upper()}_PORT", default, minimum=1, maximum=65535, env=env)


def configured_ports(env: Mapping[str, str] | None = None) -> frozenset[int]:
    """The gRPC port of every service and the edge's HTTP port, as configured in ``env``:
    ports the project must never hand out as "free" to anything else."""
    return frozenset(service_port(name, env) for name in (*SERVICE_PORTS, "edge"))


def default_kdf_concurrency() -> int:
    """One KDF per CPU: more threads only share the same cores and stretch every hash."""
    return os.cpu_count() or 1


def service_settings(
    name: str, *, env: Mapping[str, str] | None = None, infra: InfraUrls | None = None
) -> ServiceSettings:
    """Settings for the service ``name`` from the environment (``RIDESHARE_<NAME>_PORT`` ...)."""
    grpc_default, metrics_default = SERVICE_PORTS[name]
    upper = name.upper()
    return ServiceSettings(
        name=name,
        infra=infra if infra is not None else load_infra_urls(env=env),
        host=env_str("RIDESHARE_HOST", "127.0.0.1", env=env),
        grpc_port=env_int(
            f"RIDESHARE_{upper}_PORT", grpc_default, minimum=0, maximum=65535, env=env
        ),
        metrics_port=env_int(
            f"RIDESHARE_{upper}_METRICS_PORT", metrics_default, minimum=0, maximum=65535, env=env
        ),
        log_level=env_str("RIDESHARE_LOG_LEVEL", "INFO", env=env).upper(),
        shutdown_grace_s=env_float("RIDESHARE_SHUTDOWN_GRACE_S", 5.0, minimum=0.0, env=env),
        db_pool_max=env_int("RIDESHARE_DB_POOL_MAX", 10, minimum=1, maximum=200, env=env),
        bind_retry_s=env_float("RIDESHARE_BIND_RETRY_S", BIND_RETRY_S, minimum=0.0, env=env),
        kdf_concurrency=env_int(
            "RIDESHARE_KDF_CONCURRENCY", default_kdf_concurrency(), minimum=1, maximum=256, env=env
        ),
        kdf_queue=env_int("RIDESHARE_KDF_QUEUE", 32, minimum=0, maximum=10_000, env=env),
        internal_secret=load_internal_secret(env=env),
    )
