"""The trip service: quotes, the trip state machine, dispatch and ratings.

The pure core (no I/O) is ``errors``, ``machine``, ``pricing``, ``liveness`` and ``domain``, with
``wire`` for every protobuf conversion. Around it: ``store`` (Postgres), ``commands`` (the use
cases: one version-checked transaction with its outbox events each), ``dispatch`` and
``sweeper`` (the workers), ``events`` (what it consumes), ``server`` (the gRPC servicer) and
``app`` (the wiring). The adapters import the core, never the other way round.
"""
