"""What several route modules share: the error responses documented on every route."""

from __future__ import annotations

from typing import Any

from edge.errors import ErrorResponse

__all__ = ["ERRORS"]

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (401, "Missing, invalid or expired token"),
        (403, "The token's role may not do this"),
        (404, "Not found"),
        (409, "Conflicts with the current state"),
        (413, "Request body too large"),
        (422, "Invalid request"),
        (429, "Rate limited; see Retry-After"),
        (503, "An upstream service is unavailable"),
        (504, "An upstream service timed out"),
    )
}
