"""The modelhost SDK: get model session tokens, deploy model folders, manage credentials.

Sync functions for scripts and notebooks; ``a``-prefixed coroutines for async code.
"""

from modelhost.client.credentials import Credentials, load_credentials, save_credentials
from modelhost.client.errors import ApiError
from modelhost.client.sdk import (
    adeploy,
    aget_session_token,
    alogin,
    deploy,
    get_session_token,
    login,
)

__all__ = [
    "ApiError",
    "Credentials",
    "adeploy",
    "aget_session_token",
    "alogin",
    "deploy",
    "get_session_token",
    "load_credentials",
    "login",
    "save_credentials",
]
