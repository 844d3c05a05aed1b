"""``prt.models``: session tokens, deployment and LLM server mode, as in Practicus AI's SDK."""

from modelhost import serving as server
from modelhost.client.sdk import deploy, get_session_token

__all__ = ["deploy", "get_session_token", "server"]
