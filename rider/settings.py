"""The rider service's own settings: the payment provider and the charging worker
(``RIDESHARE_STRIPE_*``, ``RIDESHARE_PAYMENT_*``), beside the shared ``ServiceSettings``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from rider.billing import RetryPolicy
from rider.payments import WorkerPolicy
from rideshare.settings import SettingsError, env_float, env_int, env_str

__all__ = ["LOCAL_API_KEY", "PaymentSettings"]

# localstripe accepts any key; only a provider on this machine gets this default.
LOCAL_API_KEY = "sk_test_localstripe"


@dataclass(frozen=True)
class PaymentSettings:
    """Where the provider is and how charges are tried; tests build it directly."""

    api_base: str
    """RIDESHARE_STRIPE_API_BASE, or the embedded localstripe's URL from the infra file."""
    api_key: str = field(default=LOCAL_API_KEY, repr=False)
    """RIDESHARE_STRIPE_API_KEY; required unless the provider is on 127.0.0.1."""
    timeout_s: float = 10.0
    """Deadline of each provider call (RIDESHARE_STRIPE_TIMEOUT_S)."""
    worker: WorkerPolicy = field(default_factory=WorkerPolicy)

    def __post_init__(self) -> None:
        parts = urlsplit(self.api_base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SettingsError(
                f"RIDESHARE_STRIPE_API_BASE={self.api_base!r} is not an http(s) URL "
                "(start `rideshare infra up`, or give the provider's API base)"
            )
        if self.worker.lease_s <= self.timeout_s:
            raise SettingsError(
                f"RIDESHARE_PAYMENT_LEASE_S={self.worker.lease_s:g} must exceed "
                f"RIDESHARE_STRIPE_TIMEOUT_S={self.timeout_s:g}: a charge still in flight "
                "would be taken over"
            )

    @classmethod
    def from_env(cls, api_base: str, env: Mapping[str, str] | None = None) -> PaymentSettings:
        """``api_base`` is the infrastructure's (InfraUrls.stripe_api_base)."""
        local = urlsplit(api_base).hostname in ("127.0.0.1", "localhost", "::1")
        key = env_str("RIDESHARE_STRIPE_API_KEY", LOCAL_API_KEY if local else "", env=env)
        if not key:
            raise SettingsError(
                f"RIDESHARE_STRIPE_API_KEY is required for the provider at {api_base}"
            )
        return cls(
            api_base=api_base,
            api_key=key,
            timeout_s=env_float("RIDESHARE_STRIPE_TIMEOUT_S", 10.0, minimum=0.1, env=env),
            worker=WorkerPolicy(
                retry=RetryPolicy(
                    max_attempts=env_int(
                        "RIDESHARE_PAYMENT_MAX_ATTEMPTS", 4, minimum=1, maximum=20, env=env
                    ),
                    first_delay_s=env_float(
                        "RIDESHARE_PAYMENT_RETRY_S", 30.0, minimum=0.0, env=env
                    ),
                ),
                lease_s=env_float("RIDESHARE_PAYMENT_LEASE_S", 60.0, minimum=0.5, env=env),
            ),
        )
