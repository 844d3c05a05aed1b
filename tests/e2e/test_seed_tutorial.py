"""The seed tutorial, as a user runs it, against the demo LLM (SmolLM2-135M via transformers).

Slow by nature (a real LLM generates 200 tokens per call on 2 CPU cores), so the module
shares one server and one deployed model.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import requests

from modelhost.demo import DEMO_KEY, demo_folder

from .harness import Server, free_port

pytestmark = pytest.mark.slow


def upload_with_cli(server: Server, local: Path, key: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "modelhost.cli", "files", "upload", str(local), key],
        env=server.env(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert "uploaded" in out.stdout


@pytest.fixture(scope="module")
def llm_server(tmp_path_factory: pytest.TempPathFactory, demo_assets) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    srv = Server(tmp_path_factory.mktemp("mh-llm"), free_port())
    upload_with_cli(srv, demo_assets.hf_dir, DEMO_KEY)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def api_url(llm_server: Server) -> Iterator[str]:
    with llm_server.sdk_credentials():
        import practicuscore as prt

        api_url, version_url, meta_url = prt.models.deploy(
            deployment_key="llm-depl",
            prefix="llm-models",
            model_name="llama-1b-basic-test",
            model_dir=str(demo_folder("llama-1b-basic-test")),
        )
        assert api_url == f"{llm_server.url}/llm-models/llama-1b-basic-test/"
        assert version_url == api_url + "v1/" and meta_url == api_url + "?get_meta=true"
        yield api_url


def test_seed_notebook_flow(api_url: str) -> None:
    """The seed's cells, with only api_url changed."""
    import practicuscore as prt

    token = prt.models.get_session_token(api_url)
    assert prt.models.get_session_token(api_url, token=token) == token  # still fresh: reused

    headers = {"authorization": f"Bearer {token}"}
    r = requests.get(api_url + "?get_meta=true", headers=headers)
    assert r.status_code == 200
    assert r.json()["state"] == "ready"
    assert r.json()["model_json"]["download_files_from"] == DEMO_KEY

    data = {"user_prompt": "Who is Einstein?"}
    r = requests.get(api_url, headers=headers, json=data)
    assert r.status_code == 200, r.text
    answer = r.json()["answer"]
    assert answer.startswith("Time:") and "Einstein" in answer
    assert r.headers["x-prt-model-name"] == "llama-1b-basic-test"


def test_sixteen_parallel_clients_and_health_stays_fast(llm_server: Server, api_url: str) -> None:
    import practicuscore as prt

    token = prt.models.get_session_token(api_url)
    headers = {"authorization": f"Bearer {token}"}
    prompts = [f"Name {i + 1} famous scientist." for i in range(16)]
    health_times: list[float] = []
    stop = threading.Event()

    def probe_health() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            assert httpx.get(llm_server.url + "/healthz", timeout=5).status_code == 200
            health_times.append(time.perf_counter() - started)
            stop.wait(0.5)

    def ask(prompt: str) -> requests.Response:
        return requests.post(api_url, headers=headers, json={"user_prompt": prompt}, timeout=900)

    prober = threading.Thread(target=probe_health)
    prober.start()
    try:
        with ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(ask, prompts))
    finally:
        stop.set()
        prober.join()
    assert [r.status_code for r in responses] == [200] * 16
    assert all("answer:" in r.json()["answer"] for r in responses)
    assert health_times and max(health_times) < 1.0


@pytest.fixture
def practicus_cache() -> Iterator[Path]:
    path = Path("/var/practicus/cache")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        pytest.skip("cannot create /var/practicus/cache on this machine")
    yield path


def test_seed_model_byte_for_byte(
    tmp_path_factory: pytest.TempPathFactory,
    demo_assets,
    practicus_cache: Path,  # type: ignore[no-untyped-def]
) -> None:
    """The seed's own model.py and model.json, unchanged, with the host's cache dir at
    /var/practicus/cache (Practicus' path)."""
    seed = Path(__file__).parent / "seed_model"
    srv = Server(
        tmp_path_factory.mktemp("mh-seed"),
        free_port(),
        extra_env={"MODELHOST_CACHE_DIR": str(practicus_cache)},
    )
    upload_with_cli(srv, demo_assets.hf_dir, "cache/llama-1b-instruct/")
    srv.start()
    try:
        result = srv.deploy(seed, "llm-models", "llama-1b-basic-test", deployment="llm-depl")
        assert result["state"] == "ready", result
        token = srv.session_token(result["api_url"])
        r = requests.get(
            result["api_url"],
            headers={"authorization": f"Bearer {token}"},
            json={"user_prompt": "Who is Einstein?"},
            timeout=600,
        )
        assert r.status_code == 200, r.text
        assert "answer:" in r.json()["answer"]
    finally:
        srv.stop()


def test_seed_files_match_the_tutorial() -> None:
    """tests/e2e/seed_model is a byte-for-byte copy of the tutorial's supplementary files."""
    import re

    tutorial = Path(__file__).resolve().parents[3] / "shared" / "seed" / "000_4eee4ff2b0f90b44.txt"
    if not tutorial.exists():
        pytest.skip("the shared seed tutorial is not beside this checkout")
    text = tutorial.read_text()
    seed = Path(__file__).parent / "seed_model"
    model_py = re.search(r"### model.py\n```python\n(.*?)```", text, re.S)
    model_json = re.search(r"### model.json\n```json\n(.*?)```", text, re.S)
    assert model_py and model_json
    assert (seed / "model.py").read_text() == model_py.group(1)
    assert (seed / "model.json").read_text() == model_json.group(1)
