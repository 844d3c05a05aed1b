"""`modelhost.logs`: JSON lines with request ids, and no credential in any log line."""

from __future__ import annotations

import contextvars
import json
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from modelhost import logs

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlLWJ5dGVz"


@pytest.fixture
def root_restored() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def _lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line]


def test_json_lines_carry_level_logger_message_and_request_id(
    root_restored: object, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.setup("info", "json", pod="depl-host-v1-0")
    log = logging.getLogger("modelhost.access")
    log.info("%s %s %d", "POST", "/p/m/", 200, extra={"request_id": "abc-1"})
    log.debug("not at info")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("modelhost.worker").exception("predict failed")
    first, second = (json.loads(line) for line in _lines(capsys))
    assert first["message"] == "POST /p/m/ 200" and first["request_id"] == "abc-1"
    assert first["level"] == "info" and first["logger"] == "modelhost.access"
    assert first["pod"] == "depl-host-v1-0" and first["ts"].endswith("Z")
    assert second["level"] == "error" and "ValueError: boom" in second["exc"]


def test_text_lines_name_the_request_id(
    root_restored: object, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.setup("info", "text")
    logging.getLogger("modelhost.access").info("GET /x/ 404", extra={"request_id": "r-9"})
    (line,) = _lines(capsys)
    assert "INFO modelhost.access: GET /x/ 404 request_id=r-9" in line


def test_lines_logged_while_a_request_is_handled_name_it(
    root_restored: object, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.setup("info", "json")
    log = logging.getLogger("model.code")

    def handle(request_id: str, explicit: str | None) -> None:
        logs.REQUEST_ID.set(request_id)
        log.info("in %s", request_id)
        log.info("explicit", extra={"request_id": explicit})
        # a sync predict runs on a pool thread in a copy of the request's context
        with ThreadPoolExecutor(1) as pool:
            pool.submit(contextvars.copy_context().run, log.info, "thread").result()
            pool.submit(log.info, "thread without the context").result()

    contextvars.copy_context().run(handle, "req-a", "given-b")
    log.info("outside")
    lines = [json.loads(line) for line in _lines(capsys)]
    ids = [(line["message"], line.get("request_id")) for line in lines]
    assert ids == [
        ("in req-a", "req-a"),
        ("explicit", "given-b"),
        ("thread", "req-a"),
        ("thread without the context", None),
        ("outside", None),
    ]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_credentials_are_masked_whoever_logs_them(
    fmt: str, root_restored: object, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.setup("info", fmt)
    log = logging.getLogger("some.library")
    log.info("headers: %s", {"authorization": f"Bearer {JWT}"})
    log.info("token %s and access token %s", JWT, "mh_AbCdEfGhIjKlMnOp")
    log.warning('body {"email": "a@b", "password": "hunter2-secret"} and url ?password=s3cret&x=1')
    try:
        raise RuntimeError(f"could not verify {JWT}")
    except RuntimeError:
        log.exception("failed")
    out = "\n".join(_lines(capsys))
    for secret in (JWT, "mh_AbCdEfGhIjKlMnOp", "hunter2-secret", "s3cret"):
        assert secret not in out
    assert out.count("[redacted]") >= 5


def test_an_unknown_format_is_refused(root_restored: object) -> None:
    with pytest.raises(ValueError, match="MODELHOST_LOG_FORMAT"):
        logs.setup("info", "yaml")
