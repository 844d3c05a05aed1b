"""Deploy input, part 2: the paths in model.json.

- `download_files_to` is a folder relative to the cache dir (no absolute path, no '..',
  nothing that resolves outside it);
- `llm.model` is a file or folder in the model folder or the cache dir;
- `download_files_from` never names the platform's own `_modelhost/...` keys (another
  model's code) and has no '..' segment.

Checked at deploy (`model_folder.check_folder`, a 400 naming the field) and again in the worker
(`prepare.load_runner`, the version fails with the same message before any file is written).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.harness import Server, free_port, model_dir
from modelhost.errors import InvalidModelFolder
from modelhost.store import LocalStore
from modelhost.wire.model_folder import check_folder, check_model_json
from modelhost.wire.spec import WorkerSpec
from modelhost.worker.llm_runner import _model_path
from modelhost.worker.meta import ModelMeta
from modelhost.worker.prepare import load_runner, sync_files

DEMO_MODELS = Path(__file__).resolve().parents[2] / "src" / "modelhost" / "demo_models"
ECHO = "async def predict(payload_dict: dict, **kwargs):\n    return payload_dict\n"

GOOD = [
    {},
    {"note": "no paths at all"},
    {"download_files_from": "", "download_files_to": ""},
    {"download_files_from": "cache/my-model/"},
    {"download_files_from": "/cache/my-model", "download_files_to": "my-model/"},
    {"download_files_from": "models/_modelhost/x/"},  # only the top-level folder is reserved
    {"download_files_to": "."},
    {"download_files_to": "a/b/c"},
    {"llm": {"model": "SmolLM2-135M-Instruct.Q4_1.gguf"}},
    {"llm": {"model": "hf/SmolLM2-135M-Instruct"}},
    {"llm": {"max_seqs": 4}},  # "model" missing: the worker says so when it starts the engine
]

BAD = [
    ({"download_files_to": "../../x"}, "download_files_to", "'..'"),
    ({"download_files_to": "a/../../x"}, "download_files_to", "'..'"),
    ({"download_files_to": ".."}, "download_files_to", "'..'"),
    ({"download_files_to": "/tmp/x"}, "download_files_to", "absolute"),
    ({"download_files_to": "~/x"}, "download_files_to", "absolute"),
    ({"download_files_to": "C:/x"}, "download_files_to", "absolute"),
    ({"download_files_to": "a\\..\\..\\x"}, "download_files_to", "backslash"),
    ({"download_files_to": "a\x00b"}, "download_files_to", "NUL"),
    ({"download_files_to": 3}, "download_files_to", "relative to the cache dir"),
    (
        {"download_files_from": "_modelhost/models/p/victim/abc/"},
        "download_files_from",
        "platform's own keys",
    ),
    ({"download_files_from": "/_modelhost/models/"}, "download_files_from", "platform's own keys"),
    ({"download_files_from": "_MODELHOST/models/"}, "download_files_from", "platform's own keys"),
    ({"download_files_from": "_modelhost"}, "download_files_from", "platform's own keys"),
    ({"download_files_from": "cache/../_modelhost/models/"}, "download_files_from", "'..'"),
    ({"download_files_from": "./_modelhost/models/"}, "download_files_from", "'.'"),
    ({"download_files_from": "cache/.."}, "download_files_from", "'..'"),
    ({"download_files_from": "cache\\..\\_modelhost"}, "download_files_from", "backslash"),
    ({"download_files_from": ["cache/x/"]}, "download_files_from", "key prefix string"),
    ({"llm": {"model": "/etc/passwd"}}, "llm.model", "absolute"),
    ({"llm": {"model": "../other/model.gguf"}}, "llm.model", "'..'"),
    ({"llm": {"model": "x/../../model.gguf"}}, "llm.model", "'..'"),
    ({"llm": {"model": "~root/model.gguf"}}, "llm.model", "absolute"),
    ({"llm": {"model": ""}}, "llm.model", "must name a file or folder"),
    ({"llm": {"model": 7}}, "llm.model", "must name a file or folder"),
]


@pytest.mark.parametrize("model_json", GOOD, ids=[json.dumps(g) for g in GOOD])
def test_allowed_paths(model_json: dict[str, Any]) -> None:
    check_model_json(model_json)


@pytest.mark.parametrize(("model_json", "field", "why"), BAD, ids=[repr(b[0]) for b in BAD])
def test_refused_paths_name_the_field_and_the_fix(
    model_json: dict[str, Any], field: str, why: str
) -> None:
    with pytest.raises(InvalidModelFolder) as info:
        check_model_json(model_json)
    message = str(info.value)
    assert message.startswith(f"model.json: {field}"), message
    assert why in message
    assert "e.g." in message or "'cache/my-model/'" in message  # the fix


@pytest.mark.parametrize("demo", sorted(p.name for p in DEMO_MODELS.iterdir()))
def test_the_demo_model_folders_pass(demo: str) -> None:
    check_folder(DEMO_MODELS / demo)


def test_check_folder_refuses_at_deploy(tmp_path: Path) -> None:
    folder = model_dir(tmp_path, "m", ECHO, '{"download_files_to": "../../x"}')
    with pytest.raises(InvalidModelFolder, match=re.escape("download_files_to '../../x' has a")):
        check_folder(folder)


# --- in the worker: the same rules before any file is written ----------------------------


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Path]:
    """A store holding a model folder and another model's folder, and an empty cache dir."""
    store = LocalStore(tmp_path / "store")
    store.put_bytes("_modelhost/models/p/m/v1/model.py", ECHO.encode())
    store.put_bytes("_modelhost/models/p/victim/v1/model.py", b"SECRET = 'victim code'\n")
    store.put_bytes("cache/assets/hello.txt", b"hello")
    (tmp_path / "cache").mkdir()
    yield tmp_path
    # whatever happened, nothing landed outside the cache dir and the version folder
    assert {p.name for p in tmp_path.iterdir()} <= {"cache", "store", "versions"}


def _spec(host: Path, model_json: dict[str, Any]) -> WorkerSpec:
    return WorkerSpec(
        socket_path=str(host / "w.sock"),
        version_dir=str(host / "versions" / "p" / "m" / "v1"),
        store_url=f"file://{host / 'store'}",
        store_key="_modelhost/models/p/m/v1/",
        model_id=1,
        name="m",
        prefix="p",
        version=1,
        deployment="d",
        cache_dir=str(host / "cache"),
        pod_name="test",
        model_json=model_json,
    )


def _cache_files(host: Path) -> list[str]:
    return sorted(str(p.relative_to(host / "cache")) for p in (host / "cache").rglob("*"))


@pytest.mark.parametrize(
    ("model_json", "field"),
    [
        ({"download_files_from": "_modelhost/models/p/victim/v1/"}, "download_files_from"),
        (
            {"download_files_from": "cache/assets/", "download_files_to": "../../x"},
            "download_files_to",
        ),
        (
            {"download_files_from": "cache/assets/", "download_files_to": "../escaped"},
            "download_files_to",
        ),
    ],
)
def test_the_worker_refuses_a_registry_row_that_breaks_the_rules(
    host: Path, model_json: dict[str, Any], field: str
) -> None:
    """A version recorded before these rules (or edited by hand) fails when its files are
    fetched (`sync_files`, run by the supervisor before the worker) and when it loads."""
    spec = _spec(host, model_json)
    with pytest.raises(InvalidModelFolder) as info:
        sync_files(spec)
    assert str(info.value).startswith(f"model.json: {field}")
    if field == "download_files_from":
        return  # the worker itself never reads from the store
    with pytest.raises(InvalidModelFolder) as info:  # the worker's model_meta.cache_dir
        asyncio.run(load_runner(spec))
    assert str(info.value).startswith(f"model.json: {field}")
    assert _cache_files(host) == []


def test_the_worker_refuses_a_download_folder_outside_even_with_nothing_to_fetch(
    host: Path,
) -> None:
    spec = _spec(host, {"download_files_to": "../escaped"})
    sync_files(spec)  # only the model folder: download_files_from is not set
    with pytest.raises(InvalidModelFolder, match=re.escape("download_files_to '../escaped'")):
        asyncio.run(load_runner(spec))


def test_the_worker_refuses_an_absolute_download_folder(host: Path) -> None:
    target = host / "abs"  # if it were used, it would show up next to the cache dir
    model_json = {"download_files_from": "cache/assets/", "download_files_to": str(target)}
    with pytest.raises(InvalidModelFolder, match="is absolute"):
        sync_files(_spec(host, model_json))
    assert not target.exists()


def test_the_worker_refuses_a_cache_folder_that_links_outside(host: Path) -> None:
    (host / "cache" / "link").symlink_to(host / "store", target_is_directory=True)
    model_json = {"download_files_from": "cache/assets/", "download_files_to": "link/x"}
    try:
        with pytest.raises(InvalidModelFolder, match="resolves outside"):
            sync_files(_spec(host, model_json))
        assert not (host / "store" / "x").exists()
    finally:
        (host / "cache" / "link").unlink()


def test_the_worker_refuses_a_bad_model_json_in_the_folder(host: Path) -> None:
    store = LocalStore(host / "store")
    store.put_bytes("_modelhost/models/p/m/v1/model.json", b'{"download_files_to": "/tmp/x"}')
    spec = _spec(host, {})
    sync_files(spec)
    with pytest.raises(InvalidModelFolder, match="download_files_to '/tmp/x' is absolute"):
        asyncio.run(load_runner(spec))


def test_the_worker_syncs_an_allowed_folder(host: Path) -> None:
    spec = _spec(host, {"download_files_from": "cache/assets/", "download_files_to": "assets"})
    sync_files(spec)
    runner = asyncio.run(load_runner(spec))
    assert runner.hooks == ["predict"]
    assert (host / "cache" / "assets" / "hello.txt").read_text() == "hello"
    assert runner.meta.cache_dir == str(host / "cache" / "assets")  # type: ignore[attr-defined]


def _meta(tmp_path: Path) -> ModelMeta:
    for name in ("model", "cache"):
        (tmp_path / name).mkdir(exist_ok=True)
    return ModelMeta(
        1, "m", "p", 1, "d", str(tmp_path / "cache"), str(tmp_path / "model"), "pod", {}
    )


def test_llm_model_is_found_in_the_model_folder_or_the_cache(tmp_path: Path) -> None:
    meta = _meta(tmp_path)
    (tmp_path / "cache" / "w.gguf").write_bytes(b"gguf")
    (tmp_path / "model" / "hf").mkdir()
    assert _model_path(meta, "w.gguf") == tmp_path / "cache" / "w.gguf"
    assert _model_path(meta, "hf") == tmp_path / "model" / "hf"


def test_llm_model_may_not_leave_them(tmp_path: Path) -> None:
    meta = _meta(tmp_path)
    outside = tmp_path / "outside.gguf"
    outside.write_bytes(b"gguf")
    with pytest.raises(InvalidModelFolder, match=r"llm\.model .* is absolute"):
        _model_path(meta, str(outside))
    with pytest.raises(InvalidModelFolder, match=r"llm\.model .* has a '\.\.' segment"):
        _model_path(meta, "../outside.gguf")
    (tmp_path / "model" / "link.gguf").symlink_to(outside)
    with pytest.raises(InvalidModelFolder, match=r"llm\.model 'link\.gguf' resolves outside"):
        _model_path(meta, "link.gguf")


# --- end to end: a real server refuses the deploy and keeps serving ----------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("mh-home"), free_port()).start()
    yield srv
    srv.stop()


def test_deploys_with_unsafe_paths_are_refused_and_the_server_keeps_serving(
    server: Server, tmp_path: Path
) -> None:
    victim = server.deploy(model_dir(tmp_path, "victim", ECHO), "sec", "victim")
    assert victim["status"] == 200 and victim["state"] == "ready", victim
    keys = sorted((server.home / "store" / "_modelhost" / "models" / "sec").glob("victim/*"))
    assert keys, "the victim's folder is in the store"
    victim_key = f"_modelhost/models/sec/victim/{keys[0].name}/"

    cases = [
        ({"download_files_from": "cache/x/", "download_files_to": "../../x"}, "download_files_to"),
        ({"download_files_from": "cache/x/", "download_files_to": "/tmp/x"}, "download_files_to"),
        ({"download_files_from": victim_key}, "download_files_from"),
        ({"llm": {"model": "/etc/passwd"}}, "llm.model"),
    ]
    for i, (model_json, field) in enumerate(cases):
        folder = model_dir(tmp_path, f"bad{i}", ECHO, json.dumps(model_json))
        result = server.deploy(folder, "sec", f"bad{i}")
        assert result["status"] == 400, result
        assert result["error"]["type"] == "invalid_model_folder", result
        assert result["error"]["message"].startswith(f"model.json: {field}"), result
    assert not (server.home.parent / "x").exists()  # where cache/../../x would be

    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    token = server.session_token(victim["api_url"])
    r = httpx.post(
        victim["api_url"], json={"still": "serving"}, headers={"authorization": f"Bearer {token}"}
    )
    assert r.status_code == 200 and r.json() == {"still": "serving"}
    r = httpx.post(server.url + "/sec/bad0/", json={}, headers={"authorization": f"Bearer {token}"})
    assert r.status_code in (401, 403, 404)  # never deployed
