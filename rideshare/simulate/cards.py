"""The rider apps' card: tokenized with the payment provider, as a real app does with the
provider's SDK, so the edge and the services only ever see a payment-method id."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx

from rideshare.settings import DEFAULT_DATA_DIR, INFRA_FILE

__all__ = ["PUBLISHABLE_KEY", "TEST_CARD", "default_stripe_api_base", "tokenize_card"]

TEST_CARD = "4242424242424242"
# A real app tokenizes with the provider's publishable key (Stripe.js, pk_...); localstripe
# takes any key for this call but only in a secret key's shape (sk_...), and checks none.
PUBLISHABLE_KEY = "sk_test_localstripe"


def default_stripe_api_base() -> str:
    """``RIDESHARE_STRIPE_API_BASE``, else the embedded provider's from the infra file of
    ``RIDESHARE_DATA_DIR``; "" when there is neither (the apps add no card)."""
    given = os.environ.get("RIDESHARE_STRIPE_API_BASE", "").strip()
    if given:
        return given
    data_dir = Path(os.environ.get("RIDESHARE_DATA_DIR", "").strip() or DEFAULT_DATA_DIR)
    try:
        return str(json.loads((data_dir / INFRA_FILE).read_text()).get("stripe_api_base", ""))
    except (OSError, ValueError):
        return ""


async def tokenize_card(
    api_base: str,
    number: str = TEST_CARD,
    *,
    key: str = PUBLISHABLE_KEY,
    timeout_s: float = 10.0,
) -> str:
    """The provider's payment-method id for the card ``number``."""
    async with httpx.AsyncClient(timeout=timeout_s) as http:
        response = await http.post(
            f"{api_base}/v1/payment_methods",
            auth=(key, ""),
            data={
                "type": "card",
                "card[number]": number,
                "card[exp_month]": "12",
                "card[exp_year]": "2034",
                "card[cvc]": "123",
            },
        )
        response.raise_for_status()
        return str(response.json()["id"])
