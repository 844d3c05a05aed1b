import practicuscore as prt


async def init(model_meta=None, *args, **kwargs):
    upstream = model_meta.model_json.get("upstream")
    if upstream:  # proxy mode: an external OpenAI-compatible server with its own key
        prt.models.server.start_serving(base_url=upstream["base_url"], api_key=upstream["api_key"])
    else:
        prt.models.server.start_serving(
            model="SmolLM2-135M-Instruct.Q4_1.gguf", options={"max_seqs": 4}, model_meta=model_meta
        )


async def predict(payload_dict: dict, **kwargs):
    answer = await prt.models.server.serve(**payload_dict)
    if isinstance(answer, dict):
        answer["served_by"] = "model.py"
    return answer


async def cleanup(model_meta=None, *args, **kwargs):
    prt.models.server.stop_serving()
