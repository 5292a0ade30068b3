"""The trip service's errors: one base, ``TripError``, and a subclass per way a request fails.

They live in their own module, below ``machine``, ``pricing`` and ``domain``, so each of those
can raise them without importing the others; ``domain`` re-exports every one. ``server.py`` maps
each class to one gRPC status code (noted on each class).
"""

from __future__ import annotations

__all__ = [
    "AlreadyRatedError",
    "ConcurrencyError",
    "DriverUnavailableError",
    "InvalidArgumentError",
    "InvalidTransition",
    "NotFoundError",
    "OfferExpiredError",
    "OfferMismatchError",
    "PermissionDeniedError",
    "QuoteExpiredError",
    "QuoteUsedError",
    "RiderHasLiveTripError",
    "TripError",
]


class TripError(Exception):
    """Base of every error the trip service raises on purpose."""


class InvalidArgumentError(TripError):
    """Malformed input: bad coordinates, stars out of range, an unknown class (INVALID_ARGUMENT)."""


class NotFoundError(TripError):
    """No trip or quote with that id, or a trip the caller may not see (NOT_FOUND)."""


class PermissionDeniedError(TripError):
    """The caller is not the party allowed to act: wrong rider or driver (PERMISSION_DENIED)."""


class InvalidTransition(TripError):
    """The trip's state does not allow the command (FAILED_PRECONDITION)."""


class QuoteExpiredError(TripError):
    """The quote's validity ended before the trip was requested (FAILED_PRECONDITION)."""


class QuoteUsedError(TripError):
    """The quote booked a trip already; a quote books at most one (FAILED_PRECONDITION)."""


class OfferMismatchError(TripError):
    """The offer named is not the trip's pending one, or one is pending already
    (FAILED_PRECONDITION)."""


class OfferExpiredError(TripError):
    """The offer lapsed, or no offer is pending any more (FAILED_PRECONDITION)."""


class RiderHasLiveTripError(TripError):
    """The rider already has a trip that has not ended (FAILED_PRECONDITION)."""


class AlreadyRatedError(TripError):
    """This side of the trip has rated already; each side rates once (FAILED_PRECONDITION)."""


class ConcurrencyError(TripError):
    """The trip changed since it was read: the version check matched no row (ABORTED)."""


class DriverUnavailableError(TripError):
    """The driver holds another pending offer or a live trip already (FAILED_PRECONDITION)."""
