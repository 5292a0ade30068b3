from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from rideshare.log import (
    JsonFormatter,
    configure_logging,
    current_request_id,
    new_request_id,
    request_id_var,
)


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("trip"))
    logger = logging.getLogger("tests.unit.test_log")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_record_is_one_json_line_with_service_logger_level_and_message(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    logger.info("trip %s accepted by %s", "t1", "d1")
    [entry] = lines(stream)
    assert entry["service"] == "trip"
    assert entry["logger"] == "tests.unit.test_log"
    assert entry["level"] == "INFO"
    assert entry["msg"] == "trip t1 accepted by d1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(entry["ts"]))
    assert "request_id" not in entry
    assert "exc" not in entry


def test_the_current_request_id_is_on_every_line_logged_while_it_is_set(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    token = request_id_var.set("req-123")
    try:
        assert current_request_id() == "req-123"
        logger.warning("inside")
    finally:
        request_id_var.reset(token)
    logger.warning("outside")
    inside, outside = lines(stream)
    assert inside["request_id"] == "req-123"
    assert "request_id" not in outside


def test_exception_info_and_extra_fields_are_included(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed", extra={"trip_id": "t1", "attempt": 2})
    [entry] = lines(stream)
    assert entry["level"] == "ERROR"
    assert "ValueError: boom" in str(entry["exc"])
    assert entry["trip_id"] == "t1"
    assert entry["attempt"] == 2


def test_configure_logging_writes_json_lines_to_stderr_at_the_given_level(
    restore_root_logger: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("rider", "warning")
    configure_logging("rider", "WARNING")  # twice is harmless: one handler
    logging.getLogger("rider.app").info("hidden")
    logging.getLogger("rider.app").warning("shown")
    err = capsys.readouterr().err
    [entry] = [json.loads(line) for line in err.splitlines()]
    assert entry["service"] == "rider"
    assert entry["msg"] == "shown"


def test_configure_logging_rejects_an_unknown_level(restore_root_logger: None) -> None:
    with pytest.raises(ValueError, match="LOUD"):
        configure_logging("rider", "LOUD")


def test_new_request_ids_are_16_hex_digits_and_differ() -> None:
    ids = {new_request_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)
