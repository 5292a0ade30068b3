"""Identity on every gRPC call, against the five real services in this process: no call gets
through without a valid service token, each method admits only the callers its service's
ACCESS table names, and request fields that name a user are checked against the acting user.

Methods are taken from the services' descriptors, so a new method is covered (and must be in
its service's table: rideshare.identity.access_table refuses a table that misses one).
"""

from __future__ import annotations

import contextlib
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import jwt
import pytest
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass

from driver.server import ACCESS as DRIVER_ACCESS
from location.server import ACCESS as LOCATION_ACCESS
from location.settings import LocationSettings
from notification.server import ACCESS as NOTIFICATION_ACCESS
from notification.settings import NotificationSettings
from protos.common.v1 import common_pb2
from protos.driver.v1 import driver_pb2
from protos.location.v1 import location_pb2
from protos.notification.v1 import notification_pb2
from protos.rider.v1 import rider_pb2
from protos.trip.v1 import trip_pb2
from rider.server import ACCESS as RIDER_ACCESS
from rideshare.identity import (
    ACTING_USER_METADATA_KEY,
    AUTH_METADATA_KEY,
    OPERATOR,
    ROLES,
    SERVICES,
    AccessTable,
    Caller,
    Role,
    User,
    mint_token,
    process_secret,
)
from rideshare.settings import InfraUrls, ServiceSettings
from tests.helpers import operator_channel
from trip.server import ACCESS as TRIP_ACCESS
from trip.settings import TripSettings

BERLIN = common_pb2.LatLng(lat=52.52, lng=13.405)
ACROSS_TOWN = common_pb2.LatLng(lat=52.50, lng=13.45)

Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Service:
    descriptor: ServiceDescriptor
    access: AccessTable
    target: str


@dataclass
class Services:
    by_name: dict[str, Service]
    channels: dict[str, grpc.aio.Channel]  # as the operator (make_channel's default)
    bare: dict[str, grpc.aio.Channel]  # no identity at all

    def call(self, service: str, method: str, request: Any, md: Metadata = ()) -> Awaitable[Any]:
        desc = self.by_name[service].descriptor
        path = f"/{desc.full_name}/{method}"
        out = GetMessageClass(desc.methods_by_name[method].output_type)
        callable_ = self.channels[service].unary_unary(
            path, request_serializer=_serialize, response_deserializer=out.FromString
        )
        return callable_(request, metadata=md, timeout=10)


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data


def svc(name: str, infra: InfraUrls) -> ServiceSettings:
    return ServiceSettings(name=name, infra=infra, grpc_port=0, shutdown_grace_s=0.5)


@pytest.fixture(scope="module")
async def services(infra: InfraUrls) -> AsyncIterator[Services]:
    from driver.app import running as driver_running
    from location.app import running as location_running
    from notification.app import running as notification_running
    from rider.app import running as rider_running
    from trip.app import running as trip_running

    prefix = f"t_{uuid.uuid4().hex[:8]}"
    async with contextlib.AsyncExitStack() as stack:
        # No availability rebuild: it would read from whatever listens on the default ports.
        location = await stack.enter_async_context(
            location_running(svc("location", infra), LocationSettings(driver_addr="", trip_addr=""))
        )
        rider = await stack.enter_async_context(
            rider_running(svc("rider", infra), schema=f"{prefix}_rider", durable=f"{prefix}_rider")
        )
        driver = await stack.enter_async_context(
            driver_running(
                svc("driver", infra), schema=f"{prefix}_driver", durable=f"{prefix}_driver"
            )
        )
        trip = await stack.enter_async_context(
            trip_running(
                svc("trip", infra),
                TripSettings(
                    location_addr=f"127.0.0.1:{location.port}", consumer_name=f"{prefix}_trip"
                ),
                schema=f"{prefix}_trip",
            )
        )
        notification = await stack.enter_async_context(
            notification_running(
                svc("notification", infra),
                NotificationSettings(schema=f"{prefix}_notif", durable=f"{prefix}_notif"),
            )
        )
        by_name = {
            "rider": Service(
                rider_pb2.DESCRIPTOR.services_by_name["RiderService"],
                RIDER_ACCESS,
                f"127.0.0.1:{rider.port}",
            ),
            "driver": Service(
                driver_pb2.DESCRIPTOR.services_by_name["DriverService"],
                DRIVER_ACCESS,
                f"127.0.0.1:{driver.port}",
            ),
            "trip": Service(
                trip_pb2.DESCRIPTOR.services_by_name["TripService"],
                TRIP_ACCESS,
                f"127.0.0.1:{trip.port}",
            ),
            "location": Service(
                location_pb2.DESCRIPTOR.services_by_name["LocationService"],
                LOCATION_ACCESS,
                f"127.0.0.1:{location.port}",
            ),
            "notification": Service(
                notification_pb2.DESCRIPTOR.services_by_name["NotificationService"],
                NOTIFICATION_ACCESS,
                f"127.0.0.1:{notification.port}",
            ),
        }
        channels = {
            name: await stack.enter_async_context(operator_channel(s.target))
            for name, s in by_name.items()
        }
        bare = {
            name: await stack.enter_async_context(grpc.aio.insecure_channel(s.target))
            for name, s in by_name.items()
        }
        yield Services(by_name, channels, bare)


# --- calling any method ----------------------------------------------------------------------


def identity(
    service: str, user: User | None = None, *, secret: str | None = None, ttl_s: int = 600
) -> Metadata:
    token = mint_token(secret or process_secret(), service=service, ttl_s=ttl_s)
    md: Metadata = ((AUTH_METADATA_KEY, f"Bearer {token}"),)
    if user is not None:
        md += ((ACTING_USER_METADATA_KEY, user.header),)
    return md


async def status_of_call(
    channel: grpc.aio.Channel, service: ServiceDescriptor, method: MethodDescriptor, md: Metadata
) -> tuple[grpc.StatusCode, str]:
    """The status a call of ``method`` with an empty request and ``md`` ends with."""
    path = f"/{service.full_name}/{method.name}"
    request = GetMessageClass(method.input_type)()
    kwargs: dict[str, Any] = {"request_serializer": _serialize, "response_deserializer": None}
    try:
        if method.client_streaming:
            await channel.stream_unary(path, **kwargs)(aiter_of(), metadata=md, timeout=10)
        elif method.server_streaming:
            call = channel.unary_stream(path, **kwargs)(request, metadata=md, timeout=10)
            async for _ in call:
                break
            call.cancel()
        else:
            await channel.unary_unary(path, **kwargs)(request, metadata=md, timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def aiter_of() -> AsyncIterator[bytes]:
    return
    yield b""


def every_method(services: Services) -> list[tuple[str, ServiceDescriptor, MethodDescriptor]]:
    return [
        (name, s.descriptor, m)
        for name, s in services.by_name.items()
        for m in s.descriptor.methods
    ]


def forged_tokens() -> dict[str, str]:
    now = int(time.time())
    claims = {"iss": "rideshare", "aud": "rideshare-internal", "sub": "edge", "iat": now}
    return {
        "another secret": mint_token(secrets.token_urlsafe(48), service=OPERATOR),
        "expired": jwt.encode(
            {**claims, "iat": now - 7200, "exp": now - 3600}, process_secret(), algorithm="HS256"
        ),
        "alg none": jwt.encode({**claims, "exp": now + 600}, key=None, algorithm="none"),
        "the edge's app token shape": jwt.encode(
            {"sub": "edge", "role": "admin", "exp": now + 600, "iss": "rideshare"},
            process_secret(),
            algorithm="HS256",
        ),
        "wrong audience": jwt.encode(
            {**claims, "aud": "someone-else", "exp": now + 600}, process_secret(), "HS256"
        ),
        "unknown service": jwt.encode(
            {**claims, "sub": "mallory", "exp": now + 600}, process_secret(), "HS256"
        ),
        "not a jwt": "hello",
    }


# --- no identity, a bad one ------------------------------------------------------------------


async def test_every_method_refuses_a_call_without_identity(services: Services) -> None:
    refused = {}
    for name, service, method in every_method(services):
        refused[method.full_name] = await status_of_call(services.bare[name], service, method, ())
    assert {m: code for m, (code, _) in refused.items()} == {
        m: grpc.StatusCode.UNAUTHENTICATED for m in refused
    }
    assert len(services.by_name) == 5 and len(refused) > 30  # every method of the five services


async def test_every_method_refuses_forged_expired_and_malformed_tokens(
    services: Services,
) -> None:
    wrong: dict[tuple[str, str], grpc.StatusCode] = {}
    for label, token in forged_tokens().items():
        for name, service, method in every_method(services):
            md = ((AUTH_METADATA_KEY, f"Bearer {token}"),)
            code, _ = await status_of_call(services.bare[name], service, method, md)
            if code is not grpc.StatusCode.UNAUTHENTICATED:
                wrong[(label, method.full_name)] = code
    assert wrong == {}


async def test_only_the_edge_and_the_operator_may_act_for_a_user(services: Services) -> None:
    user = User("admin", "admin-1")
    for name, service, method in every_method(services):
        for caller in SERVICES:
            if caller in ("edge", OPERATOR):
                continue
            code, _ = await status_of_call(
                services.bare[name], service, method, identity(caller, user)
            )
            assert code is grpc.StatusCode.UNAUTHENTICATED, (caller, method.full_name)


async def test_health_and_reflection_stay_open(services: Services) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    for name in services.by_name:
        reply = await health_pb2_grpc.HealthStub(services.bare[name]).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


# --- the tables ------------------------------------------------------------------------------


def callers() -> list[Caller]:
    return [
        *(Caller(s) for s in SERVICES),
        *(
            Caller(acting, User(role, f"{role}-x"))
            for acting in ("edge", OPERATOR)
            for role in ROLES
        ),
    ]


async def test_each_method_admits_exactly_the_callers_its_table_names(services: Services) -> None:
    mismatches = []
    for name, service, method in every_method(services):
        rule = services.by_name[name].access[f"/{service.full_name}/{method.name}"]
        for caller in callers():
            code, details = await status_of_call(
                services.bare[name], service, method, identity(caller.service, caller.user)
            )
            denied_by_table = (
                code is grpc.StatusCode.PERMISSION_DENIED and "may not call" in details
            )
            # (Authenticate's own UNAUTHENTICATED is about the phone and password)
            refused_identity = code is grpc.StatusCode.UNAUTHENTICATED and "token" in details
            if denied_by_table == rule.permits(caller) or refused_identity:
                mismatches.append((method.full_name, caller, code.name, details))
    assert mismatches == []


# --- actor checks ----------------------------------------------------------------------------


def phone() -> str:
    return "+49151" + "".join(secrets.choice("0123456789") for _ in range(8))


async def new_rider(services: Services) -> str:
    request = rider_pb2.CreateRiderRequest(
        name="Ada", phone=phone(), password=secrets.token_urlsafe(18)
    )
    reply = await services.call("rider", "CreateRider", request, identity("edge"))
    return str(reply.id)


async def new_driver(services: Services) -> str:
    request = driver_pb2.CreateDriverRequest(
        name="Bo", phone=phone(), password=secrets.token_urlsafe(18), license_number="L-1"
    )
    reply = await services.call("driver", "CreateDriver", request, identity("edge"))
    return str(reply.id)


def as_user(role: Role, user_id: str) -> Metadata:
    return identity("edge", User(role, user_id))


async def denied(call: Callable[[], Awaitable[Any]]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call()
    return err.value.code(), err.value.details() or ""


async def test_a_rider_reads_and_changes_only_their_own_account(services: Services) -> None:
    a, b = await new_rider(services), await new_rider(services)
    call = services.call

    own = await call(
        "rider", "GetRider", rider_pb2.GetRiderRequest(rider_id=a), as_user("rider", a)
    )
    assert own.id == a
    other = await denied(
        lambda: call(
            "rider", "GetRider", rider_pb2.GetRiderRequest(rider_id=a), as_user("rider", b)
        )
    )
    ghost = str(uuid.uuid4())
    missing = await denied(
        lambda: call(
            "rider", "GetRider", rider_pb2.GetRiderRequest(rider_id=ghost), as_user("rider", b)
        )
    )
    assert other[0] is missing[0] is grpc.StatusCode.NOT_FOUND
    assert other[1].replace(a, ghost) == missing[1]

    rename = rider_pb2.UpdateRiderRequest(rider_id=a, name="Mallory")
    code, _ = await denied(lambda: call("rider", "UpdateRider", rename, as_user("rider", b)))
    assert code is grpc.StatusCode.NOT_FOUND
    trips = rider_pb2.ListTripsRequest(rider_id=a)
    code, _ = await denied(lambda: call("rider", "ListTrips", trips, as_user("rider", b)))
    assert code is grpc.StatusCode.NOT_FOUND
    after = await call("rider", "GetRider", rider_pb2.GetRiderRequest(rider_id=a))
    assert after.name == "Ada"
    # an admin reads any rider
    admin = as_user("admin", "admin-1")
    assert (await call("rider", "GetRider", rider_pb2.GetRiderRequest(rider_id=a), admin)).id == a


async def test_a_driver_reads_and_changes_only_their_own_account(services: Services) -> None:
    x, y = await new_driver(services), await new_driver(services)
    call = services.call
    code, _ = await denied(
        lambda: call(
            "driver", "GetDriver", driver_pb2.GetDriverRequest(driver_id=x), as_user("driver", y)
        )
    )
    assert code is grpc.StatusCode.NOT_FOUND
    code, _ = await denied(
        lambda: call(
            "driver", "GoOffline", driver_pb2.GoOfflineRequest(driver_id=x), as_user("driver", y)
        )
    )
    assert code is grpc.StatusCode.NOT_FOUND
    own = await call(
        "driver", "GetDriver", driver_pb2.GetDriverRequest(driver_id=x), as_user("driver", x)
    )
    assert own.id == x


async def test_notifications_are_read_only_by_their_owner(services: Services) -> None:
    a, b = await new_rider(services), await new_rider(services)
    request = notification_pb2.ListNotificationsRequest(user_id=a)
    code, _ = await denied(
        lambda: services.call("notification", "ListNotifications", request, as_user("rider", b))
    )
    assert code is grpc.StatusCode.PERMISSION_DENIED
    mark = notification_pb2.MarkReadRequest(user_id=a, notification_ids=[str(uuid.uuid4())])
    code, _ = await denied(
        lambda: services.call("notification", "MarkRead", mark, as_user("rider", b))
    )
    assert code is grpc.StatusCode.PERMISSION_DENIED
    own = await services.call("notification", "ListNotifications", request, as_user("rider", a))
    assert all(n.user_id == a for n in own.notifications)


async def test_a_driver_reports_only_their_own_position(services: Services) -> None:
    x, y = await new_driver(services), await new_driver(services)
    update = location_pb2.PositionUpdate(
        driver_id=x, lat=52.52, lng=13.405, client_ts_ms=time.time_ns() // 1_000_000
    )
    code, _ = await denied(
        lambda: services.call("location", "ReportPosition", update, as_user("driver", y))
    )
    assert code is grpc.StatusCode.PERMISSION_DENIED
    result = await services.call("location", "ReportPosition", update, as_user("driver", x))
    assert result.accepted


async def book(services: Services, rider: str) -> trip_pb2.Trip:
    md = as_user("rider", rider)
    quote = await services.call(
        "trip",
        "EstimateFare",
        trip_pb2.EstimateFareRequest(
            rider_id=rider,
            pickup=BERLIN,
            dropoff=ACROSS_TOWN,
            vehicle_class=common_pb2.VEHICLE_CLASS_STANDARD,
        ),
        md,
    )
    request = trip_pb2.RequestTripRequest(
        rider_id=rider, quote_id=quote.quote_id, pickup=BERLIN, dropoff=ACROSS_TOWN
    )
    trip: trip_pb2.Trip = await services.call("trip", "RequestTrip", request, md)
    return trip


async def test_trip_commands_act_only_as_the_acting_user(services: Services) -> None:
    a, b = await new_rider(services), await new_rider(services)
    call = services.call
    quote_for_a = trip_pb2.EstimateFareRequest(
        rider_id=a,
        pickup=BERLIN,
        dropoff=ACROSS_TOWN,
        vehicle_class=common_pb2.VEHICLE_CLASS_STANDARD,
    )
    code, _ = await denied(lambda: call("trip", "EstimateFare", quote_for_a, as_user("rider", b)))
    assert code is grpc.StatusCode.PERMISSION_DENIED

    trip = await book(services, a)

    def cancel(actor: int, actor_id: str, md: Metadata) -> Awaitable[Any]:
        request = trip_pb2.CancelTripRequest(trip_id=trip.id, actor=actor, actor_id=actor_id)  # type: ignore[arg-type]
        return call("trip", "CancelTrip", request, md)

    for actor, actor_id, md in [
        (trip_pb2.ACTOR_ADMIN, "nobody", as_user("rider", a)),  # a rider claiming to be admin
        (trip_pb2.ACTOR_ADMIN, "nobody", identity("edge")),  # the edge as itself: not in ACCESS
        (trip_pb2.ACTOR_RIDER, a, as_user("rider", b)),  # another rider naming the owner
        (trip_pb2.ACTOR_RIDER, b, as_user("admin", b)),  # an admin claiming to be a rider
        (trip_pb2.ACTOR_SYSTEM, "", identity(OPERATOR)),  # the service's own actor
    ]:
        code, _ = await denied(lambda: cancel(actor, actor_id, md))  # noqa: B023
        assert code is grpc.StatusCode.PERMISSION_DENIED, (actor, actor_id, md)

    # a trip another rider cannot see is NOT_FOUND, the same as one that does not exist
    seen = await denied(
        lambda: call(
            "trip", "GetTrip", trip_pb2.GetTripRequest(trip_id=trip.id), as_user("rider", b)
        )
    )
    ghost = str(uuid.uuid4())
    missing = await denied(
        lambda: call("trip", "GetTrip", trip_pb2.GetTripRequest(trip_id=ghost), as_user("rider", b))
    )
    assert seen[0] is missing[0] is grpc.StatusCode.NOT_FOUND
    assert seen[1].replace(trip.id, ghost) == missing[1]

    # a rider lists only their own trips
    for request in (
        trip_pb2.ListTripsRequest(),
        trip_pb2.ListTripsRequest(rider_id=a),
        trip_pb2.ListTripsRequest(driver_id=a),
    ):
        code, _ = await denied(lambda: call("trip", "ListTrips", request, as_user("rider", b)))  # noqa: B023
        assert code is grpc.StatusCode.PERMISSION_DENIED
    mine = await call(
        "trip", "ListTrips", trip_pb2.ListTripsRequest(rider_id=a), as_user("rider", a)
    )
    assert [t.id for t in mine.trips] == [trip.id]

    # a driver acts only as themselves
    accept = trip_pb2.AcceptTripRequest(trip_id=trip.id, driver_id="driver-y", offer_id="o")
    code, _ = await denied(
        lambda: call("trip", "AcceptTrip", accept, as_user("driver", "driver-x"))
    )
    assert code is grpc.StatusCode.PERMISSION_DENIED

    # the rider themselves, and the operator as admin, pass the check (with no driver in
    # town the trip may have ended already: then the state machine answers, not the check)
    for actor, actor_id, md in [
        (trip_pb2.ACTOR_RIDER, a, as_user("rider", a)),
        (trip_pb2.ACTOR_ADMIN, "ops", identity(OPERATOR)),
        (trip_pb2.ACTOR_ADMIN, "admin-1", as_user("admin", "admin-1")),
    ]:
        try:
            done = await cancel(actor, actor_id, md)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() is grpc.StatusCode.FAILED_PRECONDITION, exc
        else:
            assert done.state == trip_pb2.TRIP_STATE_CANCELLED
