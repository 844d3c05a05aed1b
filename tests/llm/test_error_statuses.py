"""One error→status table (`modelhost.http_status`): every domain error gets the same status
through the gateway's responses and through the LLM protocols (OpenAI's error object and the
plain one at the model root), and worker-side LLM code does not import the gateway."""

from __future__ import annotations

import subprocess
import sys

import pytest

from modelhost import errors
from modelhost.client.errors import ApiError
from modelhost.gateway import http_errors
from modelhost.llm import service
from modelhost.wire.handshake import HandshakeRefused

EXPECTED = {
    errors.BadRequest: 400,
    errors.InvalidJSON: 400,
    errors.InvalidModelFolder: 400,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.MethodNotAllowed: 405,
    errors.Conflict: 409,
    errors.PayloadTooLarge: 413,
    errors.UnsupportedMediaType: 415,
    errors.TooManyRequests: 429,
    errors.QueueFull: 429,
    errors.PredictFailed: 500,
    errors.UpstreamUnavailable: 502,
    errors.ModelNotReady: 503,
    errors.WorkerUnavailable: 503,
    HandshakeRefused: 503,
    errors.PredictTimeout: 504,
    errors.ModelhostError: 500,
}


def _all_errors(cls: type[errors.ModelhostError]) -> list[type[errors.ModelhostError]]:
    return [cls, *(sub for c in cls.__subclasses__() for sub in _all_errors(c))]


# The SDK's error for a non-2xx answer: raised by clients, never answered by a server.
CLIENT_SIDE = {ApiError}


def test_every_domain_error_has_an_expected_status() -> None:
    # every module defining one is imported above, so the walk does not depend on which
    # other tests ran first
    found = set(_all_errors(errors.ModelhostError)) - CLIENT_SIDE
    assert found <= set(EXPECTED), "add new errors here"


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda c: c.__name__)
def test_gateway_and_llm_protocols_give_one_status(cls: type[errors.ModelhostError]) -> None:
    error = cls("boom")
    gateway = http_errors.status_of(error)
    openai_result = service._openai_error(error)
    plain_result = service._plain_error(error)
    assert gateway == openai_result.status == plain_result.status == EXPECTED[cls]
    gateway_headers = {k.decode(): v.decode() for k, v in http_errors.error_headers(error)}
    gateway_headers.pop("content-type")
    assert openai_result.headers == plain_result.headers == gateway_headers


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 409, 413, 415, 429])
def test_a_models_http_exception_status_comes_back_unchanged(status: int) -> None:
    assert http_errors.status_of(http_errors.error_for_status(status, "x")) == status


def test_worker_side_llm_code_does_not_import_the_gateway() -> None:
    code = (
        "import sys, modelhost.llm.service, modelhost.llm.embeddings\n"
        "print(sorted(m for m in sys.modules if m.startswith('modelhost.gateway')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
