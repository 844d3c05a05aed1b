"""Benchmark peer: the seed tutorial's basic deployment as a plain FastAPI app.

Copied unchanged from /work/shared/peers/seed_host.py (the shared benchmark peers).

Loads an HF-format model dir with a transformers text-generation pipeline and
answers GET/POST / {"user_prompt": ...} exactly as the seed's model.py does
(blocking generate inside an async handler). Run: uvicorn seed_host:app
Env: MODEL_DIR (HF format dir), MAX_NEW_TOKENS (default 200).
"""

# ruff: noqa: E401, I001  (kept byte for byte as the shared peer has it)
import os, time
from fastapi import FastAPI, Request
from transformers import AutoTokenizer, AutoModelForCausalLM, pipeline

d = os.environ["MODEL_DIR"]
tok = AutoTokenizer.from_pretrained(d)
model = AutoModelForCausalLM.from_pretrained(d).to("cpu")
generator = pipeline(
    "text-generation",
    model=model,
    tokenizer=tok,
    max_new_tokens=int(os.environ.get("MAX_NEW_TOKENS", "200")),
)
app = FastAPI()


@app.api_route("/", methods=["GET", "POST"])
async def predict(request: Request):
    payload = await request.json()
    start = time.time()
    res = generator([payload["user_prompt"]])
    return {"answer": f"Time:{time.time() - start}\nanswer:{res[0]}"}
