"""Drop-in for `langchain_practicus`: `ChatPracticus(endpoint_url, api_token, model_id)`."""

from modelhost.langchain import ChatModelhost as ChatPracticus

__all__ = ["ChatPracticus"]
