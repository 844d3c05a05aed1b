"""The practicuscore drop-in and the gen_ai models the seed's model.py imports."""

from __future__ import annotations

import subprocess
import sys

import modelhost
import practicuscore as prt
from modelhost.client import sdk


def test_prt_models_are_the_sdk() -> None:
    assert prt.models.get_session_token is sdk.get_session_token
    assert prt.models.deploy is sdk.deploy
    assert modelhost.get_session_token is sdk.get_session_token
    assert modelhost.deploy is sdk.deploy
    assert modelhost.login is sdk.login
    assert modelhost.__version__ == "0.1.0"
    assert prt.gen_ai.PrtLangRequest is modelhost.gen_ai.PrtLangRequest


def test_seed_import_line() -> None:
    from practicuscore.gen_ai import (  # noqa: F401
        ChatCompletionRequest,
        ChatCompletionResponse,
        ChatCompletionResponseChoice,
        ChatCompletionResponseChoiceMessage,
        ChatCompletionResponseUsage,
        ChatMessage,
        PrtLangMessage,
        PrtLangRequest,
        PrtLangResponse,
    )


def test_deploy_signature_matches_practicus() -> None:
    import inspect

    params = inspect.signature(prt.models.deploy).parameters
    assert list(params)[:4] == ["deployment_key", "prefix", "model_name", "model_dir"]
    assert params["model_dir"].default is None
    token_params = inspect.signature(prt.models.get_session_token).parameters
    assert list(token_params) == ["api_url", "token", "for_upload"]


def test_imports_stay_light() -> None:
    """Workers import practicuscore.gen_ai; that must not drag in the server or the SDK."""
    code = (
        "import sys, modelhost, practicuscore\n"
        "from practicuscore.gen_ai import PrtLangRequest\n"
        "heavy = {'torch', 'starlette', 'sqlalchemy', 'httpx', 'uvicorn', 'boto3'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_attribute() -> None:
    import pytest

    with pytest.raises(AttributeError):
        _ = prt.nothing_here
    with pytest.raises(AttributeError):
        _ = modelhost.nothing_here
