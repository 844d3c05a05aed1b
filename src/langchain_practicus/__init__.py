"""Drop-in for `langchain_practicus`: `ChatPracticus(endpoint_url, api_token, model_id)` and
`PracticusEmbeddings(endpoint_url, api_token, model_id)`."""

from modelhost.langchain import ChatModelhost as ChatPracticus
from modelhost.langchain_embeddings import ModelhostEmbeddings as PracticusEmbeddings

__all__ = ["ChatPracticus", "PracticusEmbeddings"]
