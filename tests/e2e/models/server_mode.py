import json

import practicuscore as prt

UPSTREAM = {}


async def init(model_meta=None, *args, **kwargs):
    upstream = model_meta.model_json.get("upstream")
    if upstream:  # proxy mode: an external OpenAI-compatible server with its own key
        UPSTREAM.update(upstream)
        prt.models.server.start_serving(proxy_mode=True)
    else:
        prt.models.server.start_serving(
            model="SmolLM2-135M-Instruct.Q4_1.gguf", options={"max_seqs": 4}, model_meta=model_meta
        )


async def predict(payload_dict: dict, **kwargs):
    if UPSTREAM:
        answer = await prt.models.server.serve(
            payload_dict=payload_dict,
            proxy_base_url=UPSTREAM["base_url"],
            proxy_token=UPSTREAM["api_key"],
            sub_path="chat/completions",
        )
    else:
        answer = await prt.models.server.serve(**payload_dict)
    body = json.loads(answer.body)
    body["served_by"] = "model.py"
    return body


async def cleanup(model_meta=None, *args, **kwargs):
    prt.models.server.stop_serving()
