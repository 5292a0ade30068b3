"""Per-install secrets: random values kept in files of mode 0600 in the data directory.

Every secret the project generates for itself (the edge's JWT signing secret, the passwords
of the Valkey and NATS users, PostgreSQL's password) is made once, the first time it is
needed, and read back on every later start, so a restart keeps it and a new install gets its
own. Nothing here logs a secret's value.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["secret_file"]


def secret_file(data_dir: Path, name: str, nbytes: int) -> str:
    """The secret in ``<data_dir>/<name>``, created once with ``nbytes`` random bytes (as
    URL-safe text, usable in a URL's password without quoting) and mode 0600.

    The directory is created (0700) when missing. A file that exists is read as it is, with
    surrounding whitespace stripped, whatever its length: the caller checks what it needs.
    """
    path = data_dir / name
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        # Written whole under a private name with its final mode from the start, then linked
        # into place: a concurrent starter either wins the link or reads the winner's
        # complete file, never a half-written one, and no reader ever sees it group-readable.
        tmp = data_dir / f".{name}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(nbytes) + "\n")
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
        finally:
            tmp.unlink()
    return path.read_text().strip()
