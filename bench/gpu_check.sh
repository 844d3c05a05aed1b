#!/usr/bin/env bash
# GPU smoke check of the vllm backend, end to end through modelhost (not run in CI).
#
#   bench/gpu_check.sh [HF_MODEL_FOLDER]
#
# On a machine with a CUDA GPU and internet access: installs vllm into the active Python
# (skipped when it imports already), starts `modelhost serve` in a temporary home, uploads
# the HF model folder (default: the demo SmolLM2-135M-Instruct, prepared if missing),
# deploys a no-code LLM folder with {"backend": "vllm"}, sends one streamed OpenAI chat
# completion (ignore_eos, MAX_TOKENS tokens) and prints time to first token and tokens/s.
#
# Environment: PYTHON (default python), PORT (default 8765), MAX_TOKENS (default 256),
# GPU_MEMORY_UTILIZATION (default 0.5), SKIP_INSTALL=1 to never pip install, BACKEND
# (default vllm; BACKEND=transformers checks the same path without a GPU).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python}"
PORT="${PORT:-8765}"
MAX_TOKENS="${MAX_TOKENS:-256}"
GPU_MEMORY_UTILIZATION="${GPU_MEMORY_UTILIZATION:-0.5}"
BACKEND="${BACKEND:-vllm}"
MODEL_DIR="${1:-$ROOT/.cache/demo-assets/hf}"

cd "$ROOT"
if [ "$BACKEND" = vllm ]; then
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  if ! "$PYTHON" -c "import vllm" 2>/dev/null; then
    [ "${SKIP_INSTALL:-0}" = 1 ] && { echo "vllm is not installed" >&2; exit 1; }
    "$PYTHON" -m pip install --quiet vllm
  fi
  "$PYTHON" -c "import vllm, torch; print('vllm', vllm.__version__, 'cuda', torch.cuda.is_available())"
fi
[ "${SKIP_INSTALL:-0}" = 1 ] || "$PYTHON" -m pip install --quiet -e . >/dev/null
if [ ! -f "$MODEL_DIR/config.json" ]; then
  "$PYTHON" -m modelhost.demo_assets "$ROOT/.cache/demo-assets"
fi

HOME_DIR="$(mktemp -d -t modelhost-gpu-check-XXXXXX)"
export MODELHOST_HOME="$HOME_DIR" MODELHOST_PORT="$PORT" MODELHOST_LOG_LEVEL=warning
export MODELHOST_ADMIN_PASSWORD="${MODELHOST_ADMIN_PASSWORD:-gpu-check-password}"
LOG="$(mktemp -t modelhost-gpu-check-log-XXXXXX)"

"$PYTHON" -m modelhost.cli serve >"$LOG" 2>&1 &
SERVER=$!
cleanup() {
  kill "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
  rm -rf "$HOME_DIR"
  echo "server log: $LOG"
}
trap cleanup EXIT

for _ in $(seq 1 120); do
  curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  kill -0 "$SERVER" 2>/dev/null || { tail -50 "$LOG"; exit 1; }
  sleep 0.5
done

# Synced into <cache dir>/gpu-check-hf/ (the sync keeps paths below the prefix).
"$PYTHON" -m modelhost.cli files upload "$MODEL_DIR" cache/gpu-check/gpu-check-hf/

"$PYTHON" - "$PORT" "$MAX_TOKENS" "$GPU_MEMORY_UTILIZATION" "$LOG" "$BACKEND" <<'EOF'
import io, json, os, sys, tarfile, time

import httpx

port, max_tokens, memory, log, backend = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), *sys.argv[4:6]
base = f"http://127.0.0.1:{port}"


def check(resp: httpx.Response, what: str) -> dict:
    if resp.status_code >= 300:
        tail = open(log, errors="replace").read()[-3000:]
        sys.exit(f"{what}: HTTP {resp.status_code}: {resp.text[:1000]}\n--- server log ---\n{tail}")
    return resp.json()


login = httpx.post(f"{base}/console/api/auth/", json={
    "email": "admin@modelhost.local", "password": os.environ["MODELHOST_ADMIN_PASSWORD"]})
admin = {"authorization": f"Bearer {check(login, 'login')['access']}"}

model_json = {
    "llm": {"model": "gpu-check-hf", "backend": backend, "max_seqs": 32},
    "download_files_from": "cache/gpu-check/",
}
if backend == "vllm":
    model_json["llm"]["gpu_memory_utilization"] = memory
archive = io.BytesIO()
with tarfile.open(fileobj=archive, mode="w:gz") as tar:
    data = json.dumps(model_json).encode()
    info = tarfile.TarInfo("model.json")
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))

started = time.perf_counter()
deployed = httpx.post(
    f"{base}/console/api/modelhost/deploy/",
    params={"deployment": "gpu-depl", "prefix": "gpu-models", "name": f"smol-{backend}"},
    content=archive.getvalue(),
    headers={**admin, "content-type": "application/gzip"},
    timeout=900,
)
api_url = check(deployed, "deploy")["api_url"]
auth = httpx.request("GET", f"{base}/console/api/modelhost/model-auth/",
                     json={"model_url": api_url}, headers=admin)
headers = {"authorization": f"Bearer {check(auth, 'model-auth')['token']}"}
check(httpx.get(api_url + "v1/models", headers=headers, timeout=900), "v1/models")
print(f"deployed {api_url} ({backend} engine up) in {time.perf_counter() - started:.1f}s")

body = {
    "model": f"smol-{backend}",
    "messages": [{"role": "user", "content": "Tell me a long story about the sea."}],
    "temperature": 0, "max_tokens": max_tokens, "ignore_eos": True, "stream": True,
    "stream_options": {"include_usage": True},
}
chunks, first, usage, text = 0, None, None, []
start = time.perf_counter()
with httpx.stream("POST", api_url + "v1/chat/completions", json=body, headers=headers,
                  timeout=300) as resp:
    if resp.status_code != 200:
        resp.read()
        check(resp, "chat")
    for line in resp.iter_lines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = json.loads(line[6:])
        if event.get("usage"):
            usage = event["usage"]
        for choice in event.get("choices", []):
            piece = choice.get("delta", {}).get("content")
            if piece:
                first = first or time.perf_counter()
                chunks += 1
                text.append(piece)
end = time.perf_counter()
elapsed = end - start
tokens = usage["completion_tokens"] if usage else chunks
print(f"answer: {''.join(text)[:200]!r}...")
print(f"completion tokens: {tokens}, content chunks: {chunks}")
print(f"TTFT: {(first - start) if first else float('nan'):.3f}s, total {elapsed:.2f}s")
print(f"tokens/s (one stream, incl. TTFT): {tokens / elapsed:.1f}")
if first and tokens > 1:
    print(f"tokens/s (decode, after the first token): {(tokens - 1) / (end - first):.1f}")
EOF
