"""A consumer copy as a process of its own, for tests that kill it with SIGKILL.

``python -m tests.integration.consumer_copy <nats url> <stream> <durable> <filter> <ack wait>``
runs one :class:`rideshare.bus.DurableConsumer` copy. It acks each event itself, waiting for
the server's confirmation, and then prints ``acked <event id>``; an event whose aggregate is
``hold`` is printed as ``holding <event id>`` and never acked, as by a copy that dies in the
middle of handling it.
"""

from __future__ import annotations

import asyncio
import sys

from nats.aio.msg import Msg

from rideshare import bus


async def main(url: str, stream: str, durable: str, subject: str, ack_wait_s: float) -> None:
    nc = await bus.connect(url, name="consumer-copy")
    js = nc.jetstream(timeout=5)

    async def handler(envelope: bus.Envelope, msg: Msg) -> None:
        if envelope.aggregate_id == "hold":
            print("holding", envelope.event_id, flush=True)
            await asyncio.Event().wait()
        await msg.ack_sync(timeout=5)
        print("acked", envelope.event_id, flush=True)

    consumer = bus.DurableConsumer(
        js,
        stream=stream,
        durable=durable,
        filter_subjects=[subject],
        handler=handler,
        ack_wait_s=ack_wait_s,
        batch=10,
        fetch_timeout_s=0.25,
    )
    print("ready", flush=True)
    await consumer.run(asyncio.Event())


if __name__ == "__main__":
    url, stream, durable, subject, ack_wait = sys.argv[1:6]
    asyncio.run(main(url, stream, durable, subject, float(ack_wait)))
