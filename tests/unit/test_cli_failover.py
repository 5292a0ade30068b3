"""``rideshare failover postgres``: what it refuses before touching any server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rideshare.cli import main
from rideshare.settings import INFRA_FILE


@pytest.fixture(autouse=True)
def no_urls_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RIDESHARE_REDIS_URL", "RIDESHARE_POSTGRES_DSN", "RIDESHARE_NATS_URL"):
        monkeypatch.delenv(name, raising=False)


def test_failover_without_a_standby_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = {
        "redis_url": "redis://127.0.0.1:1/0",
        "postgres_dsn": "postgresql://u:p@127.0.0.1:2/db",
        "nats_url": "nats://127.0.0.1:3",
    }
    (tmp_path / INFRA_FILE).write_text(json.dumps(record))

    assert main(["failover", "postgres", "--data-dir", str(tmp_path)]) == 2
    assert "no standby" in capsys.readouterr().err


def test_failover_with_nothing_running_says_how_to_start_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["failover", "postgres", "--data-dir", str(tmp_path)]) == 2
    assert "rideshare infra up" in capsys.readouterr().err


def test_only_postgres_can_be_failed_over(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["failover", "nats", "--data-dir", str(tmp_path)])
