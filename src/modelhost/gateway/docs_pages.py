"""``/{prefix}/docs/`` (Swagger UI) and ``/{prefix}/redoc/`` (ReDoc): the models of a prefix
(or of one model: ``/{prefix}/{model}/docs/``), as Practicus serves them.

Paths are claimed by their shape alone (`claims`): a path ending in ``/docs/`` or ``/redoc/``,
or naming one of their files, is a docs page whatever precedes it, and never reaches a model.
Deciding by what exists would tell an anonymous caller which models do (a page for one path,
401 for another).

Who sees what:
- the pages and their files need no token (a browser cannot send one when it opens a link)
  and name no model: the same bytes for every path;
- ``.../docs/openapi.json`` needs a bearer token (console login, ``mh_`` access token or a
  model session) and lists only the models below that path the caller may use, so a wrong
  prefix and a forbidden one look alike (no models).

The page reads the token from the URL fragment (``#token=...``: never sent to a server nor
logged) or asks for it, keeps it in the tab's ``sessionStorage``, fetches the document with
it and hands it to Swagger UI / ReDoc (whose files come from the ``fastapi-offline`` package,
served from memory: no CDN).
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

import orjson

from modelhost.errors import MethodNotAllowed, ModelhostError, NotFound
from modelhost.gateway.auth import MODEL_KINDS, Authenticator
from modelhost.gateway.http_errors import error_body, error_headers, status_of
from modelhost.gateway.model_openapi import document
from modelhost.gateway.routes import ModelEntry, RouteTable
from modelhost.types import Receive, Scope, Send

KINDS = MODEL_KINDS | {"user"}
PAGES = ("docs", "redoc")
_VENDORED = {  # file -> content type; from fastapi-offline's static folder
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}
_OWN = ("", "openapi.json", "modelhost-docs.js")
# Inline styles: Swagger UI and ReDoc set them; ReDoc runs its search in a blob: worker.
_CSP = (
    b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    b"img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
    b"frame-ancestors 'none'; base-uri 'none'"
)


def split(path: str) -> tuple[str, str, str] | None:
    """(scope path, page, file) for a docs path: ``/a/b/docs/x.js`` -> ("a/b", "docs", "x.js")."""
    head, _, last = path.rpartition("/")
    scope_path, _, page = head.rpartition("/")
    if page in PAGES and scope_path.strip("/") and (last in _OWN or last in _VENDORED):
        return scope_path.strip("/"), page, last
    return None


def claims(path: str) -> bool:
    """Whether `path` is a docs page or file (cheap: most paths fail the first test)."""
    return ("/docs/" in path or "/redoc/" in path) and split(path) is not None


class DocsPages:
    def __init__(self, auth: Authenticator, routes: RouteTable) -> None:
        self.auth = auth
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        head = scope["method"] == "HEAD"
        try:
            if scope["method"] not in ("GET", "HEAD"):
                raise MethodNotAllowed("docs pages answer GET", allow="GET, HEAD")
            parts = split(scope["path"])
            if parts is None:  # not claimed: the gateway does not send it here
                raise NotFound("no such docs page; open /<prefix>/docs/ or /<prefix>/redoc/")
            where, page, name = parts
            body, content_type = await self._file(scope, where, page, name)
            cache = name in _VENDORED or name == "modelhost-docs.js"
            await _send(send, 200, body, content_type, cache=cache, csp=not name, head=head)
        except ModelhostError as exc:
            extra = [(k, v) for k, v in error_headers(exc) if k != b"content-type"]
            await _send(send, status_of(exc), error_body(exc), b"application/json", extra=extra)

    async def _file(self, scope: Scope, where: str, page: str, name: str) -> tuple[bytes, bytes]:
        if name == "openapi.json":
            return await self._openapi(scope, where), b"application/json"
        if name in _VENDORED:
            return _vendored(name), _VENDORED[name].encode()
        if name == "modelhost-docs.js":
            return _script(), b"text/javascript; charset=utf-8"
        return _html(page), b"text/html; charset=utf-8"

    async def _openapi(self, scope: Scope, where: str) -> bytes:
        authorization = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        auth = self.auth
        principal = auth.cached(authorization, KINDS) or await auth.authenticate(
            authorization, KINDS
        )
        models = [
            (f"/{e.prefix}/{e.name}/", _model_json(e))
            for e in sorted(self.routes.entries(), key=lambda e: (e.prefix, e.name))
            if _below(f"{e.prefix}/{e.name}", where)
            and auth.may_use(principal, e.prefix, e.model_id)
        ]
        return orjson.dumps(document(f"/{where}/", models))


def _below(key: str, where: str) -> bool:
    return key == where or key.startswith(where + "/")


def _model_json(entry: ModelEntry) -> dict[str, object]:
    workers = entry.serving or entry.latest()
    return dict(workers.info.model_json or {}) if workers is not None else {}


async def _send(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    *,
    cache: bool = False,
    csp: bool = False,
    extra: list[tuple[bytes, bytes]] | None = None,
    head: bool = False,
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"public, max-age=86400" if cache else b"no-store"),
        (b"x-content-type-options", b"nosniff"),
        *(extra or []),
    ]
    if csp:
        headers.append((b"content-security-policy", _CSP))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


@cache
def _vendored(name: str) -> bytes:
    spec = importlib.util.find_spec("fastapi_offline")  # its files, without importing it
    if spec is None or not spec.submodule_search_locations:
        raise NotFound("the docs assets are not installed: pip install fastapi-offline")
    return (Path(spec.submodule_search_locations[0]) / "static" / name).read_bytes()


def _html(page: str) -> bytes:
    if page == "redoc":
        head = '<script src="redoc.standalone.js"></script>'
    else:
        head = (
            '<link rel="stylesheet" href="swagger-ui.css">\n'
            '<script src="swagger-ui-bundle.js"></script>'
        )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>modelhost - models</title>
<link rel="icon" type="image/png" href="favicon.png">
{head}
<script src="modelhost-docs.js" data-page="{page}" defer></script>
</head>
<body>
<form id="mh-token" hidden>
  <label>Bearer token (a console login, an access token or a model session token):
  <input id="mh-token-value" type="password" autocomplete="off" size="60"></label>
  <button type="submit">Show models</button>
  <p id="mh-error" role="alert"></p>
</form>
<div id="mh-docs"></div>
</body>
</html>
""".encode()


@cache
def _script() -> bytes:
    return b"""'use strict';
(function () {
  var page = document.currentScript.dataset.page;
  var KEY = 'modelhost-docs-token';
  var form = document.getElementById('mh-token');
  var field = document.getElementById('mh-token-value');
  var error = document.getElementById('mh-error');

  function show(spec, token) {
    form.hidden = true;
    if (page === 'redoc') {
      Redoc.init(spec, {}, document.getElementById('mh-docs'));
      return;
    }
    var ui = SwaggerUIBundle({spec: spec, dom_id: '#mh-docs', deepLinking: true});
    ui.preauthorizeApiKey('bearer', token);
  }

  function load(token) {
    fetch('openapi.json', {headers: {authorization: 'Bearer ' + token}})
      .then(function (r) {
        if (!r.ok) { throw new Error('the server answered ' + r.status); }
        return r.json();
      })
      .then(function (spec) { sessionStorage.setItem(KEY, token); show(spec, token); })
      .catch(function (e) {
        sessionStorage.removeItem(KEY);
        error.textContent = 'Cannot list the models: ' + e.message;
        form.hidden = false;
      });
  }

  form.addEventListener('submit', function (e) {
    e.preventDefault();
    if (field.value) { load(field.value.trim()); }
  });
  var fragment = new URLSearchParams(location.hash.slice(1)).get('token');
  if (fragment) { history.replaceState(null, '', location.pathname + location.search); }
  var token = fragment || sessionStorage.getItem(KEY);
  if (token) { load(token); } else { form.hidden = false; }
})();
"""
