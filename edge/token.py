"""python -m edge.token --role admin: print a token signed with the edge's secret.

Reads the same settings as the edge (RIDESHARE_JWT_SECRET, else <RIDESHARE_DATA_DIR>/jwt-secret),
so an operator or the demo can call admin routes and open the viewer.
"""

from __future__ import annotations

import argparse
import sys
import uuid

from edge.auth import ROLES, Role, issue_token
from edge.settings import MIN_SECRET_LEN, load_jwt_secret
from rideshare import ids
from rideshare.settings import SettingsError, data_dir_from_env, env_str


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge.token", description=__doc__)
    parser.add_argument("--role", choices=ROLES, default="admin")
    parser.add_argument("--sub", help="subject id (default: a new admin-<uuid>)")
    parser.add_argument("--ttl", type=int, default=12 * 3600, help="lifetime in seconds")
    args = parser.parse_args(argv)
    try:
        secret = env_str("RIDESHARE_JWT_SECRET", "")
        if secret and len(secret) < MIN_SECRET_LEN:
            raise SettingsError(f"RIDESHARE_JWT_SECRET is shorter than {MIN_SECRET_LEN}")
        secret = secret or load_jwt_secret(data_dir_from_env())
    except SettingsError as exc:
        print(f"edge.token: {exc}", file=sys.stderr)
        return 2
    if args.sub is not None and not ids.is_id(args.sub):
        # The edge would accept it, and every service would refuse the id it names.
        print(f"edge.token: --sub {args.sub!r} is not an id (rideshare/ids.py)", file=sys.stderr)
        return 2
    role: Role = args.role
    sub = args.sub or f"{role}-{uuid.uuid4()}"
    print(issue_token(secret, sub=sub, role=role, ttl_s=args.ttl))
    return 0


if __name__ == "__main__":
    sys.exit(main())
