async def init(model_meta=None, *args, **kwargs):
    raise RuntimeError("weights are missing")


async def predict(payload_dict: dict, **kwargs):
    return {"never": True}
