"""The OpenAPI document of a prefix's models (what its ``docs/`` and ``redoc/`` pages show).

Built per request from what the route table knows of each model's serving version:

- a ``model.py`` model: ``POST /{prefix}/{model}/`` with a body and an answer described by
  model.json's ``model_signature_json`` (MLflow's column specs, as `prt.models.
  create_model_config` writes it) as JSON records or CSV, else any JSON; ``model_desc``,
  ``problem_type`` and the like in the description;
- an engine model (model.json's ``llm``): its OpenAI routes under ``v1/`` (chat, completions,
  models; embeddings for an embedding model) and Practicus' request at the model URL, with
  the request shapes of `modelhost.gen_ai`.

Every model also has ``GET ...?get_meta=true``. Only the models the caller may use are in
it, so the document names nothing the caller could not call.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from modelhost import gen_ai
from modelhost.llm.embeddings import is_embedding_model
from modelhost.model_config import described, parse_signature

Json = dict[str, Any]
REF = "#/components/schemas/{model}"
_JSON_TYPES = {
    "boolean": {"type": "boolean"},
    "integer": {"type": "integer"},
    "long": {"type": "integer"},
    "float": {"type": "number"},
    "double": {"type": "number"},
    "datetime": {"type": "string", "format": "date-time"},
    "binary": {"type": "string", "format": "byte"},
}
_ANY_JSON: Json = {"description": "any JSON value"}


def document(title: str, models: list[tuple[str, Json]]) -> Json:
    """OpenAPI 3.1 for ``models``: (URL path of the model, its model.json) pairs."""
    schemas: Json = {}
    paths: Json = {}
    for path, model_json in models:
        paths.update(_model_paths(path.rstrip("/") + "/", model_json, schemas))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": "1",
            "description": "The models of this prefix you may use. Calls need a model "
            "session token or a long-lived access token as `Authorization: Bearer`.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


def _model_paths(url: str, model_json: Json, schemas: Json) -> Json:
    tag = url.strip("/")
    llm = model_json.get("llm")
    if isinstance(llm, dict):
        paths = _engine_paths(url, tag, llm, schemas)
    else:
        paths = {url: {"post": _predict(tag, model_json)}}
    paths.setdefault(url, {})["get"] = {
        "tags": [tag],
        "summary": "The model's metadata",
        "parameters": [
            {"name": "get_meta", "in": "query", "required": True, "schema": {"const": "true"}}
        ],
        "responses": {"200": _json_answer(_ANY_JSON, "version, state, model.json's metadata")},
    }
    return paths


def _predict(tag: str, model_json: Json) -> Json:
    info = described(model_json)
    signature = parse_signature(info.get("model_signature_json"))
    lines = [str(info[k]) for k in ("model_desc",) if info.get(k)]
    shown = ("problem_type", "version_name", "final_model", "target", "score")
    lines += [f"**{k}**: {info[k]}" for k in shown if info.get(k) is not None]
    if signature is None:
        body: Json = {"application/json": {"schema": _ANY_JSON}}
        answer = _json_answer(_ANY_JSON, "what predict returns")
    else:
        rows = _records(signature["inputs"])
        body = {"application/json": {"schema": rows}, "text/csv": {"schema": {"type": "string"}}}
        answer = {
            "description": "predictions: CSV to a CSV request, else JSON records",
            "content": {
                "application/json": {"schema": _records(signature["outputs"])},
                "text/csv": {"schema": {"type": "string"}},
            },
        }
    return {
        "tags": [tag],
        "summary": str(info.get("model_name") or "Predict"),
        "description": "\n\n".join(lines),
        "requestBody": {"required": True, "content": body},
        "responses": {"200": answer},
    }


def _records(columns: list[Json]) -> Json:
    properties = {
        str(c.get("name")): _JSON_TYPES.get(str(c.get("type")), {"type": "string"})
        for c in columns
        if isinstance(c, dict)
    }
    required = [str(c.get("name")) for c in columns if isinstance(c, dict) and c.get("required")]
    return {
        "type": "array",
        "items": {"type": "object", "properties": properties, "required": required},
    }


def _engine_paths(url: str, tag: str, llm: Json, schemas: Json) -> Json:
    def post(summary: str, model: type[BaseModel], answer: Json) -> Json:
        return {
            "tags": [tag],
            "summary": summary,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _schema(model, schemas)}},
            },
            "responses": {"200": answer},
        }

    models = {
        "get": {
            "tags": [tag],
            "summary": "The served model (OpenAI)",
            "responses": {"200": _json_answer(_ANY_JSON, "a model list")},
        }
    }
    if is_embedding_model(llm):
        embeddings = _json_answer(_schema(gen_ai.PrtEmbeddingsResponse, schemas), "vectors")
        return {
            url: {
                "post": post(
                    "Embeddings (PrtEmbeddingsRequest)", gen_ai.PrtEmbeddingsRequest, embeddings
                )
            },
            url + "v1/embeddings": {
                "post": post("Embeddings (OpenAI)", gen_ai.PrtEmbeddingsRequest, embeddings)
            },
            url + "v1/models": models,
        }
    chat = _json_answer(
        _schema(gen_ai.ChatCompletionResponse, schemas),
        "a chat completion, or server-sent events with stream: true",
    )
    return {
        url: {
            "post": post(
                "Chat (PrtLangRequest)",
                gen_ai.PrtLangRequest,
                _json_answer(_schema(gen_ai.PrtLangResponse, schemas), "the answer"),
            )
        },
        url + "v1/chat/completions": {
            "post": post("Chat completions (OpenAI)", gen_ai.ChatCompletionRequest, chat)
        },
        url + "v1/completions": {
            "post": post(
                "Completions (OpenAI)",
                _CompletionRequest,
                _json_answer(_ANY_JSON, "a text completion"),
            )
        },
        url + "v1/models": models,
    }


class _CompletionRequest(BaseModel):
    """``POST .../v1/completions`` (OpenAI's legacy endpoint)."""

    prompt: str | list[int]
    max_tokens: int | None = None
    temperature: float | None = None
    stream: bool = False


def _schema(model: type[BaseModel], schemas: Json) -> Json:
    """A reference to `model`'s JSON schema, added (with what it uses) to ``schemas``."""
    schema = model.model_json_schema(ref_template=REF)
    for name, sub in schema.pop("$defs", {}).items():
        schemas.setdefault(name, sub)
    schemas.setdefault(model.__name__, schema)
    return {"$ref": REF.format(model=model.__name__)}


def _json_answer(schema: Json, description: str) -> Json:
    return {"description": description, "content": {"application/json": {"schema": schema}}}
