"""How a model's ``predict`` wants its arguments: read once from its signature at load time.

Practicus models are written in several ways, and each one gets what it names:

    predict(payload_dict, **kwargs)             the parsed body (JSON; CSV → a DataFrame)
    predict(df, *args, **kwargs)                a pandas DataFrame
    predict(http_request, df=None, *a, **kw)    the request object, and the DataFrame

The first positional parameter decides what comes first: ``http_request`` gets an
`HttpRequest`, ``df`` a DataFrame, any other name the parsed body. Parameters named
``http_request``, ``df``, ``payload_dict``, ``model_meta`` or ``sub_path`` after it are passed
as keywords; a ``**kwargs`` receives ``sub_path`` (the path below the model URL, ``""`` at
the URL itself). A model that cannot see the path (no ``sub_path``, no ``**kwargs``, no
``http_request``) answers only its URL; every other one gets the sub-paths too, so a custom
OpenAI-style ``model.py`` answers ``OpenAI(base_url=api_url)``'s ``chat/completions``.

A DataFrame is built from a CSV body (``content-type: text/csv``) or from JSON records (a
list of objects), columns (an object of lists) or one row (an object of scalars); an empty
body gives ``df=None``, and so does a body that is not JSON sent without a content type to
a ``df=`` keyword (the model reads ``http_request`` itself, as Practicus documents). pandas
is an optional dependency (``pip install 'modelhost[classic]'``). A predict that raises an
exception with a 4xx ``status_code`` (``HTTPException``) answers that status.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from starlette.datastructures import URL, Headers, QueryParams

from modelhost.errors import BadRequest, InvalidJSON, ModelhostError, PredictFailed
from modelhost.http_status import error_for_status
from modelhost.worker.codec import decode_payload

if TYPE_CHECKING:
    from modelhost.worker.meta import ModelMeta
    from modelhost.worker.runner import WorkRequest

PANDAS_FIX = "pip install 'modelhost[classic]' (pandas) in the worker's environment"
KEYWORDS = ("http_request", "df", "payload_dict", "model_meta", "sub_path")
CSV_TYPE = "text/csv"


def is_csv(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == CSV_TYPE


class HttpRequest:
    """What a ``predict(http_request, ...)`` gets (a Starlette ``Request`` in Practicus).

    ``url`` is the path under this server (``/{prefix}/{model}/{sub_path}?{query}``; the
    worker does not see the host), ``headers`` the client's request headers (less
    ``authorization`` and ``cookie``; content type and length those of the body given here),
    ``body()`` the request body after the gateway decompressed it.
    """

    def __init__(
        self, method: str, url: str, headers: dict[str, str], body: bytes, sub_path: str
    ) -> None:
        self.method = method
        self.url = URL(url)
        self.headers = Headers(headers)
        self.query_params = QueryParams(self.url.query)
        self.path_params = {"sub_path": sub_path}
        self.sub_path = sub_path
        self._body = body

    async def body(self) -> bytes:
        return self._body

    async def json(self) -> Any:
        return orjson.loads(self._body)

    async def stream(self) -> AsyncIterator[bytes]:
        if self._body:
            yield self._body

    def __repr__(self) -> str:
        return f"HttpRequest({self.method} {self.url})"


def to_dataframe(payload: Any) -> Any:
    """A pandas DataFrame from a parsed body (already one for CSV)."""
    try:
        import pandas as pd
    except ImportError:
        raise BadRequest(f"this model takes a DataFrame (df): {PANDAS_FIX}", param="df") from None
    if isinstance(payload, pd.DataFrame):
        return payload
    try:
        if isinstance(payload, list) and all(isinstance(row, dict) for row in payload):
            return pd.DataFrame.from_records(payload)
        if isinstance(payload, dict) and payload:
            if all(isinstance(v, list) for v in payload.values()):
                return pd.DataFrame(payload)
            if not any(isinstance(v, list | dict) for v in payload.values()):
                return pd.DataFrame([payload])
    except ValueError as exc:  # columns of different lengths, ...
        raise BadRequest(f"df: cannot build a DataFrame from the body: {exc}", param="df") from None
    raise BadRequest(
        "df: send CSV (content-type: text/csv) or JSON records (a list of objects), "
        "columns (an object of lists) or one row (an object of scalars)",
        param="df",
    )


def predict_error(exc: Exception) -> ModelhostError:
    """What a failed predict answers: an exception carrying an HTTP status (FastAPI's or
    Starlette's ``HTTPException``: ``status_code`` and ``detail``) keeps a 4xx status through
    the one error table; anything else is a 500 naming the exception."""
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and not isinstance(status, bool) and 400 <= status < 500:
        detail = getattr(exc, "detail", None)
        return error_for_status(status, str(detail) if detail else f"HTTP {status}")
    return PredictFailed(f"predict raised {type(exc).__name__}: {exc}")


class _Inputs:
    """The values a call may need, each built at most once and only when asked for."""

    def __init__(self, request: WorkRequest, meta: ModelMeta) -> None:
        self.request = request
        self.meta = meta
        self._payload: Any = None
        self._parsed = False

    def payload(self) -> Any:
        if not self._parsed:
            self._payload = decode_payload(self.request.body, self.request.content_type)
            self._parsed = True
        return self._payload

    def df(self, optional: bool) -> Any:
        if not self.request.body:
            return None
        if optional and not self.request.content_type:
            # No content type: the model reads http_request itself (the xgboost tutorial's
            # custom-DataFrame variant); a JSON body still makes a DataFrame.
            try:
                payload = self.payload()
            except InvalidJSON:
                return None
            return to_dataframe(payload)
        return to_dataframe(self.payload())

    def http_request(self) -> HttpRequest:
        req = self.request
        url = f"/{self.meta.prefix.strip('/')}/{self.meta.name}/{req.subpath.lstrip('/')}"
        if req.query:
            url += "?" + req.query
        headers = {**req.headers, "content-length": str(len(req.body))}
        if req.content_type:
            headers["content-type"] = req.content_type
        return HttpRequest(req.method, url, headers, req.body, req.subpath)

    def value(self, name: str, keyword: bool = False) -> Any:
        if name == "http_request":
            return self.http_request()
        if name == "df":
            return self.df(optional=keyword)
        if name == "model_meta":
            return self.meta
        if name == "sub_path":
            return self.request.subpath
        return self.payload()


@dataclass(frozen=True, slots=True)
class CallPlan:
    """What to pass: ``first`` positionally (None: nothing), ``keywords`` by name."""

    first: str | None
    keywords: tuple[str, ...]

    @classmethod
    def of(cls, fn: Callable[..., Any]) -> CallPlan:
        try:
            params = list(inspect.signature(fn).parameters.values())
        except (TypeError, ValueError):  # no signature to read: the classic convention
            return cls("payload_dict", ())
        kinds = inspect.Parameter
        positional = [
            p for p in params if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)
        ]
        named = {
            p.name for p in params if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)
        }
        first: str | None
        if positional:
            name = positional[0].name
            first = name if name in ("http_request", "df") else "payload_dict"
        elif any(p.kind == kinds.VAR_POSITIONAL for p in params):
            first = "payload_dict"
        else:
            first = None
        skip = positional[0].name if positional else None
        keywords = [k for k in KEYWORDS if k in named and k != skip]
        if "sub_path" not in keywords and any(p.kind == kinds.VAR_KEYWORD for p in params):
            keywords.append("sub_path")
        return cls(first, tuple(keywords))

    @property
    def sees_sub_path(self) -> bool:
        """Whether the model can tell its URL's sub-paths apart (else it serves its URL only)."""
        return "sub_path" in self.keywords or "http_request" in (self.first, *self.keywords)

    def arguments(
        self, request: WorkRequest, meta: ModelMeta
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if self.first == "payload_dict" and self.keywords in ((), ("sub_path",)):
            # the classic predict(payload_dict, **kwargs): no per-request bookkeeping
            payload = decode_payload(request.body, request.content_type)
            return (payload,), ({"sub_path": request.subpath} if self.keywords else {})
        inputs = _Inputs(request, meta)
        args = () if self.first is None else (inputs.value(self.first),)
        return args, {name: inputs.value(name, keyword=True) for name in self.keywords}
