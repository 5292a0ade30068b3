"""A fuzz pass over the edge's live OpenAPI spec (schemathesis 4): every operation, fed valid and
invalid inputs with the bearer token of a real user in a role the route serves, answers without
a 5xx. Deterministic (derandomized Hypothesis, no example database) and bounded in size.

schemathesis sends with ``requests`` (blocking), so the pass runs in a worker thread."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

import httpx
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode, Response
from schemathesis.core.result import Ok
from schemathesis.schemas import APIOperation

from edge.auth import Role, issue_token
from tests.e2e.conftest import Stack
from tests.e2e.test_edge_flow import auth, book_trip, signup

MAX_EXAMPLES = 50  # per operation, valid and invalid inputs together
REQUEST_TIMEOUT_S = 10.0
FUZZ_TIMEOUT_S = 120.0

# The roles each route serves; a route missing here is fuzzed with every role's token.
ROUTE_ROLES: dict[str, tuple[Role, ...]] = {
    "POST /v1/fare-estimates": ("rider",),
    "POST /v1/trips": ("rider",),
    "GET /v1/me/trips": ("rider", "driver"),
    "GET /v1/me/notifications": ("rider", "driver"),
    "POST /v1/trips/{trip_id}/rating": ("rider", "driver"),
    "GET /v1/drivers/me": ("driver",),
    "POST /v1/drivers/me/vehicles": ("driver",),
    "POST /v1/drivers/me/online": ("driver",),
    "POST /v1/drivers/me/offline": ("driver",),
    "POST /v1/drivers/me/position": ("driver",),
    "POST /v1/trips/{trip_id}/accept": ("driver",),
    "POST /v1/trips/{trip_id}/decline": ("driver",),
    "POST /v1/trips/{trip_id}/arrive": ("driver",),
    "POST /v1/trips/{trip_id}/start": ("driver",),
    "POST /v1/trips/{trip_id}/complete": ("driver",),
    "GET /v1/admin/drivers": ("admin",),
    "GET /v1/admin/trips": ("admin",),
    "GET /v1/admin/trips/{trip_id}/dispatch": ("admin",),
}
ALL_ROLES: tuple[Role, ...] = ("rider", "driver", "admin")


@dataclass
class Outcome:
    """What the pass saw: every 5xx with a way to reproduce it, and status counts."""

    server_errors: list[str] = field(default_factory=list)
    statuses: dict[str, dict[int, int]] = field(default_factory=dict)

    def record(self, label: str, case: Case[Any], response: Response) -> None:
        counts = self.statuses.setdefault(label, {})
        counts[response.status_code] = counts.get(response.status_code, 0) + 1
        if response.status_code >= 500:
            curl = case.as_curl_command(headers=dict(response.request.headers))
            self.server_errors.append(
                f"{label} -> {response.status_code} {response.text[:300]}\n    {curl}"
            )


async def test_no_operation_of_the_openapi_spec_answers_a_server_error(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.edge_url, timeout=REQUEST_TIMEOUT_S) as http:
        _, rider_token = await signup(http, "rider", stripe_api_base=stack.stripe_api_base)
        _, driver_token = await signup(http, "driver")
        # a real trip of the rider's, so trip routes reach the trip service's rules, not only 404
        lat, lng = -40.0 + random.random() * 20, 100.0 + random.random() * 20
        trip_id = await book_trip(http, rider_token, lat, lng)
    tokens: dict[Role, str] = {
        "rider": rider_token,
        "driver": driver_token,
        "admin": issue_token(stack.jwt_secret, sub="admin-fuzz", role="admin", ttl_s=600),
    }
    async with asyncio.timeout(FUZZ_TIMEOUT_S):
        outcome = await asyncio.to_thread(fuzz, stack.edge_url, tokens, trip_id)

    assert not outcome.server_errors, "\n".join(outcome.server_errors)
    assert outcome.statuses.keys() >= ROUTE_ROLES.keys(), "an operation went missing"
    answered = sum(n for c in outcome.statuses.values() for s, n in c.items() if s != 429)
    assert answered > len(outcome.statuses) * MAX_EXAMPLES // 2, outcome.statuses


def fuzz(base_url: str, tokens: dict[Role, str], trip_id: str) -> Outcome:
    """Every operation of the live spec, ``MAX_EXAMPLES`` cases each (runs in a thread)."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", timeout=REQUEST_TIMEOUT_S)
    outcome = Outcome()
    with requests.Session() as session:
        for result in schema.get_all_operations():
            assert isinstance(result, Ok), f"the spec has an unusable operation: {result.err()}"
            operation = result.ok()
            label = f"{operation.method.upper()} {operation.path}"
            run_operation(
                operation,
                outcome,
                roles=ROUTE_ROLES.get(label, ALL_ROLES),
                tokens=tokens,
                trip_id=trip_id,
                session=session,
                base_url=base_url,
            )
    return outcome


def run_operation(
    operation: APIOperation[Any, Any, Any, Any],
    outcome: Outcome,
    *,
    roles: tuple[Role, ...],
    tokens: dict[Role, str],
    trip_id: str,
    session: requests.Session,
    base_url: str,
) -> None:
    """``MAX_EXAMPLES`` cases of one operation: valid, invalid, and (for trip routes) aimed at
    the real trip, each with the token of a role drawn from ``roles``."""
    label = f"{operation.method.upper()} {operation.path}"
    cases = [
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    ]
    if "{trip_id}" in operation.path:
        cases.append(operation.as_strategy(path_parameters={"trip_id": trip_id}))

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=st.one_of(cases), role=st.sampled_from(roles))
    def send(case: Case[Any], role: Role) -> None:
        headers: dict[str, Any] = auth(tokens[role])
        response = case.call(
            base_url=base_url, session=session, headers=headers, timeout=REQUEST_TIMEOUT_S
        )
        outcome.record(label, case, response)

    send()
