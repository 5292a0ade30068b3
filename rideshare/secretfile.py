"""Per-install secrets kept in the data directory: created once, random, mode 0600.

The edge's JWT secret (``jwt-secret``) and the internal service-token secret
(``internal-secret``) are both read this way, so that every process of an install that
starts from the same data directory agrees on them without any setup.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from rideshare.settings import SettingsError

__all__ = ["MIN_SECRET_LEN", "load_secret_file"]

MIN_SECRET_LEN = 32


def load_secret_file(path: Path, *, min_len: int = MIN_SECRET_LEN) -> str:
    """The secret in ``path``, created (mode 0600, its directory too) with a random one the
    first time. SettingsError when the file holds fewer than ``min_len`` characters."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # Written whole under a private name, then linked into place: a concurrent starter
        # either wins the link or reads the winner's complete file, never a half-written one.
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48) + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    secret = path.read_text().strip()
    if len(secret) < min_len:
        raise SettingsError(f"{path} holds a secret shorter than {min_len} characters")
    return secret
