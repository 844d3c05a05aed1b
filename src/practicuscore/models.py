"""``prt.models``: session tokens and deployment, as in Practicus AI's SDK."""

from modelhost.client.sdk import deploy, get_session_token

__all__ = ["deploy", "get_session_token"]
