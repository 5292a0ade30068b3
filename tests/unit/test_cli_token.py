"""``rideshare token``: a token the edge accepts, signed with the secret of the data dir given."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.auth import decode_token
from edge.settings import load_jwt_secret
from rideshare.cli import main


@pytest.fixture(autouse=True)
def no_secret_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RIDESHARE_JWT_SECRET", raising=False)


def test_token_is_signed_with_the_secret_of_the_data_dir_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["token", "--data-dir", str(tmp_path / "data")]) == 0
    token = capsys.readouterr().out.strip()

    principal = decode_token(load_jwt_secret(tmp_path / "data"), token)
    assert principal.role == "admin"
    assert principal.sub.startswith("admin-")


def test_a_rider_token_is_for_the_rider_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["token", "--role", "rider", "--subject", "r-42", "--data-dir", str(tmp_path)]
    assert main(argv) == 0
    principal = decode_token(load_jwt_secret(tmp_path), capsys.readouterr().out.strip())
    assert (principal.role, principal.sub) == ("rider", "r-42")


def test_a_rider_or_driver_token_without_a_subject_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["token", "--role", "driver", "--data-dir", str(tmp_path)]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert "--subject" in out.err


def test_the_secret_in_the_environment_wins_as_it_does_for_the_edge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "s" * 40
    monkeypatch.setenv("RIDESHARE_JWT_SECRET", secret)
    assert main(["token", "--data-dir", str(tmp_path)]) == 0
    assert decode_token(secret, capsys.readouterr().out.strip()).role == "admin"
    assert not (tmp_path / "jwt-secret").exists()


def test_a_subject_the_services_would_refuse_as_an_id_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["token", "--role", "rider", "--subject", "ops.alice", "--data-dir", str(tmp_path)]
    assert main(argv) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert "--subject 'ops.alice' is not an id" in out.err
