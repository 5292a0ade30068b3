"""The trip service: quotes, the trip state machine, dispatch and ratings.

The pure core (no I/O) is ``errors``, ``machine``, ``pricing`` and ``domain``; the adapters
around it (``server``, ``store``, ``events``, ``app``) import it, never the other way round.
"""
