"""``python -m rideshare.localstripe_server --port N --state FILE``: the embedded payment
provider, localstripe (a stateful fake of the Stripe API, from PyPI), as EmbeddedInfra runs it.

Its own command line does not fit a server the project manages, on two counts, so this runs
localstripe's aiohttp application under our own terms:

- it binds every interface (``::``); here it binds 127.0.0.1 only, like every other server;
- it pickles its whole store to the fixed path ``/tmp/localstripe.pickle`` on every write: one
  file shared by every instance on the host (two test runs would load each other's customers),
  and a cost that grows with the store on each call. Here each instance keeps its state in its
  own file, written at most once per ``FLUSH_S`` and at shutdown, atomically (a temporary file
  renamed), so a restart by the supervisor finds the customers and payments it had. A SIGKILL
  loses at most the last ``FLUSH_S`` of writes: a development stand-in, not a ledger.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pickle
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

FLUSH_S = 1.0


def _store_class() -> Any:
    from localstripe import resources

    return resources.Store


def _persist_to(path: Path) -> None:
    """Make localstripe's store load from and save to ``path`` (see the module docstring)."""
    store_cls = _store_class()
    store_cls.dirty = False

    def load(self: Any) -> None:
        try:
            with path.open("rb") as f:
                old = pickle.load(f)  # our own file, written by save() below
        except FileNotFoundError:
            return
        self.clear()
        self.update(old)

    def mark(self: Any) -> None:
        self.dirty = True

    def save(self: Any) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        with tmp.open("wb") as f:
            pickle.dump(dict(self), f, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(path)
        self.dirty = False

    store_cls.try_load_from_disk = load
    store_cls.dump_to_disk = mark  # localstripe calls it on every write
    store_cls.save_now = save


async def _flusher(store: Any) -> None:
    while True:
        await asyncio.sleep(FLUSH_S)
        if store.dirty:
            store.save_now()


def build_app(state: Path) -> web.Application:
    """localstripe's application with its store persisted to ``state``."""
    _persist_to(state)
    from localstripe import server

    store = server.store
    store.try_load_from_disk()

    async def flush_in_background(_app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(_flusher(store))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        store.save_now()

    app: web.Application = server.app
    app.cleanup_ctx.append(flush_in_background)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state", type=Path, required=True)
    args = parser.parse_args()
    web.run_app(
        build_app(args.state),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=lambda *_: None,
    )


if __name__ == "__main__":
    main()
