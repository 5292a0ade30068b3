"""gRPC servicer of rideshare.rider.v1.RiderService: request -> domain -> response, via wire.

Handlers raise domain errors; the server's interceptor gives each its status from ERRORS, and
lets through only the callers ACCESS names. A call the edge makes for an app user reads or
changes only that user's rider (another rider's is NOT_FOUND, as if it did not exist).
"""

from __future__ import annotations

from typing import Any

import grpc

from protos.rider.v1 import rider_pb2, rider_pb2_grpc
from rider import wire
from rider.billing import (
    InvalidPaymentError,
    PaymentMethodNotFoundError,
    PaymentMethodRejectedError,
    PaymentNotFoundError,
    RefundNotAllowedError,
)
from rider.commands import RiderCommands
from rider.domain import (
    BadCredentialsError,
    InvalidRiderError,
    PhoneTakenError,
    RiderNotFoundError,
)
from rider.payment_store import PaymentStore
from rider.payments import PaymentCommands
from rider.provider import ProviderUnavailableError
from rider.store import RiderStore
from rideshare import ids
from rideshare.credentials import HasherBusyError
from rideshare.db import DATA_ERRORS
from rideshare.grpc_errors import StatusTable
from rideshare.identity import AccessTable, access_table, allow, may_read

__all__ = ["ACCESS", "ERRORS", "RiderServicer"]

Context = grpc.aio.ServicerContext[Any, Any]

ERRORS: StatusTable = {
    **DATA_ERRORS,
    InvalidRiderError: grpc.StatusCode.INVALID_ARGUMENT,
    RiderNotFoundError: grpc.StatusCode.NOT_FOUND,
    PhoneTakenError: grpc.StatusCode.ALREADY_EXISTS,
    BadCredentialsError: grpc.StatusCode.UNAUTHENTICATED,
    # Alive but at its KDF capacity: retry later (429), never UNAVAILABLE, which would count
    # against the edge's circuit breaker for every call of the service.
    HasherBusyError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    InvalidPaymentError: grpc.StatusCode.INVALID_ARGUMENT,
    PaymentMethodNotFoundError: grpc.StatusCode.NOT_FOUND,
    PaymentNotFoundError: grpc.StatusCode.NOT_FOUND,
    PaymentMethodRejectedError: grpc.StatusCode.FAILED_PRECONDITION,
    RefundNotAllowedError: grpc.StatusCode.FAILED_PRECONDITION,
    # A refund asked while the provider was away stays recorded and is finished by the worker.
    ProviderUnavailableError: grpc.StatusCode.UNAVAILABLE,
}

ACCESS: AccessTable = access_table(
    rider_pb2.DESCRIPTOR.services_by_name["RiderService"],
    {
        # Sign-up and login come before there is a user: the edge calls as itself.
        "CreateRider": allow("edge"),
        "Authenticate": allow("edge"),
        "GetRider": allow(users=("rider", "admin")),
        "UpdateRider": allow(users=("rider",)),
        "ListTrips": allow(users=("rider", "admin")),
        # A rider's cards are the rider's alone; an admin sees payments and refunds them.
        "AddPaymentMethod": allow(users=("rider",)),
        "ListPaymentMethods": allow(users=("rider",)),
        "RemovePaymentMethod": allow(users=("rider",)),
        "SetDefaultPaymentMethod": allow(users=("rider",)),
        "GetPaymentStanding": allow(users=("rider",)),
        "ListTripPayments": allow(users=("rider", "admin")),
        "RefundPayment": allow(users=("admin",)),
        "GetTakings": allow(users=("admin",)),
    },
)
"""Who may call each method (rideshare.identity); the operator may call every one."""


def _readable(rider_id: str) -> str:
    """``rider_id`` if the call may read that rider; else NOT_FOUND, as for a missing one."""
    if not may_read("rider", rider_id):
        raise RiderNotFoundError(f"no rider {rider_id!r}")
    return rider_id


class RiderServicer(rider_pb2_grpc.RiderServiceServicer):
    """Rider accounts and their trip history."""

    def __init__(
        self,
        commands: RiderCommands,
        store: RiderStore,
        *,
        payments: PaymentCommands,
        payment_store: PaymentStore,
    ) -> None:
        self._commands = commands
        self._store = store
        self._payments = payments
        self._payment_store = payment_store

    async def CreateRider(
        self, request: rider_pb2.CreateRiderRequest, context: Context
    ) -> rider_pb2.Rider:
        rider = await self._commands.sign_up(wire.new_rider_from_proto(request))
        return wire.rider_to_proto(rider)

    async def GetRider(
        self, request: rider_pb2.GetRiderRequest, context: Context
    ) -> rider_pb2.Rider:
        return wire.rider_to_proto(await self._store.get(_readable(wire.rider_id_of(request))))

    async def UpdateRider(
        self, request: rider_pb2.UpdateRiderRequest, context: Context
    ) -> rider_pb2.Rider:
        changes = wire.rider_changes_from_proto(request)
        rider_id = _readable(
            wire.rider_id_of(request)
        )  # UpdateRider is for the rider alone (ACCESS)
        return wire.rider_to_proto(await self._commands.update(rider_id, changes))

    async def Authenticate(
        self, request: rider_pb2.AuthenticateRequest, context: Context
    ) -> rider_pb2.AuthenticateResponse:
        rider_id = await self._commands.authenticate(request.phone, request.password)
        return rider_pb2.AuthenticateResponse(rider_id=rider_id)

    async def ListTrips(
        self, request: rider_pb2.ListTripsRequest, context: Context
    ) -> rider_pb2.ListTripsResponse:
        page = wire.trips_page_from_proto(request)
        await self._store.get(_readable(request.rider_id))  # NOT_FOUND for an unknown rider
        trips = await self._store.list_trips(request.rider_id, page)
        return wire.list_trips_response(request.rider_id, page, trips)

    # -- payments ------------------------------------------------------------------------------

    async def _rider(self, request: Any) -> str:
        """The request's rider, readable by this call and existing; else NOT_FOUND."""
        rider_id = _readable(wire.rider_id_of(request))
        await self._store.get(rider_id)
        return rider_id

    async def AddPaymentMethod(
        self, request: rider_pb2.AddPaymentMethodRequest, context: Context
    ) -> rider_pb2.PaymentMethod:
        rider_id = await self._rider(request)
        method = await self._payments.add_method(
            rider_id, request.payment_method_id, make_default=request.make_default
        )
        return wire.payment_method_to_proto(method)

    async def ListPaymentMethods(
        self, request: rider_pb2.ListPaymentMethodsRequest, context: Context
    ) -> rider_pb2.ListPaymentMethodsResponse:
        rider_id = await self._rider(request)
        methods = await self._payment_store.methods(rider_id)
        return rider_pb2.ListPaymentMethodsResponse(
            payment_methods=[wire.payment_method_to_proto(m) for m in methods]
        )

    async def RemovePaymentMethod(
        self, request: rider_pb2.RemovePaymentMethodRequest, context: Context
    ) -> rider_pb2.RemovePaymentMethodResponse:
        rider_id = await self._rider(request)
        await self._payments.remove_method(rider_id, request.payment_method_id)
        return rider_pb2.RemovePaymentMethodResponse()

    async def SetDefaultPaymentMethod(
        self, request: rider_pb2.SetDefaultPaymentMethodRequest, context: Context
    ) -> rider_pb2.PaymentMethod:
        rider_id = await self._rider(request)
        method = await self._payments.set_default(rider_id, request.payment_method_id)
        return wire.payment_method_to_proto(method)

    async def GetPaymentStanding(
        self, request: rider_pb2.GetPaymentStandingRequest, context: Context
    ) -> rider_pb2.PaymentStanding:
        rider_id = await self._rider(request)
        verdict, outstanding, currency = await self._payments.standing(rider_id)
        reply = rider_pb2.PaymentStanding(block=int(verdict))  # type: ignore[arg-type]
        if outstanding:
            reply.outstanding.amount_minor = outstanding
            reply.outstanding.currency = currency
        return reply

    async def ListTripPayments(
        self, request: rider_pb2.ListTripPaymentsRequest, context: Context
    ) -> rider_pb2.ListTripPaymentsResponse:
        rider_id = await self._rider(request)
        trip_id = _checked_id(request.trip_id, "trip_id")
        payments = await self._payment_store.of_trip(rider_id, trip_id)
        return rider_pb2.ListTripPaymentsResponse(
            payments=[wire.payment_to_proto(p) for p in payments]
        )

    async def RefundPayment(
        self, request: rider_pb2.RefundPaymentRequest, context: Context
    ) -> rider_pb2.Payment:
        payment_id = _checked_id(request.payment_id, "payment_id")
        if len(request.reason) > 500:
            raise InvalidPaymentError("reason must be at most 500 characters")
        payment = await self._payments.refund(
            payment_id, amount_minor=request.amount_minor, reason=request.reason
        )
        return wire.payment_to_proto(await self._payment_store.with_refunds(payment.id))

    async def GetTakings(
        self, request: rider_pb2.GetTakingsRequest, context: Context
    ) -> rider_pb2.Takings:
        return rider_pb2.Takings(
            currencies=[
                rider_pb2.CurrencyTakings(
                    currency=row["currency"],
                    charges=row["charges"],
                    charged_minor=row["charged"],
                    refunded_minor=row["refunded"],
                    net_minor=row["charged"] - row["refunded"],
                    outstanding_charges=row["outstanding_charges"],
                    outstanding_minor=row["outstanding"],
                )
                for row in await self._payment_store.takings()
            ]
        )


def _checked_id(value: str, field: str) -> str:
    try:
        return ids.check_id(value, field)
    except ids.InvalidIdError as exc:
        raise InvalidPaymentError(str(exc)) from None
