"""Domain error -> gRPC status: each servicer keeps its own table, this does the aborting."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

import grpc

__all__ = ["StatusTable", "abort_with"]

StatusTable = Mapping[type[Exception], grpc.StatusCode]


async def abort_with(
    context: grpc.aio.ServicerContext[Any, Any], exc: Exception, table: StatusTable
) -> NoReturn:
    """End the call with the status that ``table`` gives ``exc``'s class (or its nearest
    base in the table) and the error's message. An error the table does not know is a bug:
    it is re-raised, and the server's interceptor turns it into INTERNAL with a logged id."""
    for cls in type(exc).__mro__:
        code = table.get(cls)
        if code is not None:
            await context.abort(code, str(exc))
    raise exc
