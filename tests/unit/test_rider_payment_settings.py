"""The rider service's payment settings fail fast on values that cannot work."""

from __future__ import annotations

import pytest

from rider.payments import WorkerPolicy
from rider.settings import LOCAL_API_KEY, PaymentSettings
from rideshare.settings import SettingsError


def test_a_local_provider_runs_with_the_dummy_key_and_the_defaults() -> None:
    settings = PaymentSettings.from_env("http://127.0.0.1:4242", env={})
    assert settings.api_key == LOCAL_API_KEY
    assert settings.worker.lease_s > settings.timeout_s
    assert "api_key" not in repr(settings)


def test_a_remote_provider_needs_a_key_and_the_message_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="RIDESHARE_STRIPE_API_KEY"):
        PaymentSettings.from_env("https://api.stripe.com", env={})
    given = PaymentSettings.from_env(
        "https://api.stripe.com", env={"RIDESHARE_STRIPE_API_KEY": "sk_live_secret"}
    )
    assert "sk_live_secret" not in repr(given)


@pytest.mark.parametrize("base", ["", "api.stripe.com", "ftp://x"])
def test_no_usable_api_base_stops_the_service_naming_the_variable(base: str) -> None:
    with pytest.raises(SettingsError, match="RIDESHARE_STRIPE_API_BASE"):
        PaymentSettings(api_base=base)


def test_a_lease_no_longer_than_a_call_is_refused() -> None:
    with pytest.raises(SettingsError, match="RIDESHARE_PAYMENT_LEASE_S"):
        PaymentSettings(
            api_base="http://127.0.0.1:1", timeout_s=10.0, worker=WorkerPolicy(lease_s=10.0)
        )
    with pytest.raises(SettingsError, match="RIDESHARE_PAYMENT_MAX_ATTEMPTS"):
        PaymentSettings.from_env("http://127.0.0.1:1", env={"RIDESHARE_PAYMENT_MAX_ATTEMPTS": "0"})
