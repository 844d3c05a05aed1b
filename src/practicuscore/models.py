"""``prt.models``: session tokens, deployment, model metadata (``create_model_config``) and
the model server (``prt.models.server``), as in Practicus AI's SDK."""

from modelhost import serving as server
from modelhost.client.sdk import deploy, get_session_token
from modelhost.model_config import ModelConfig, create_model_config

__all__ = ["ModelConfig", "create_model_config", "deploy", "get_session_token", "server"]
