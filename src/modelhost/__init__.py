"""modelhost: self-hosted model hosting, wire-compatible with Practicus AI model hosting.

Importing this package is cheap on purpose (workers and the CLI import it first): the SDK
and `gen_ai` are loaded on first use, and nothing here pulls in the server stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from modelhost import gen_ai
    from modelhost.client.sdk import deploy, get_session_token, login

__all__ = ["__version__", "deploy", "gen_ai", "get_session_token", "login"]

_LAZY = {
    "deploy": "modelhost.client.sdk",
    "get_session_token": "modelhost.client.sdk",
    "login": "modelhost.client.sdk",
}


def __getattr__(name: str) -> Any:
    if name == "gen_ai":
        return importlib.import_module("modelhost.gen_ai")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'modelhost' has no attribute {name!r}")
