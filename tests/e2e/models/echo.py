async def init(model_meta=None, *args, **kwargs):
    print("echo init", model_meta.name)


async def predict(payload_dict: dict, **kwargs):
    return payload_dict
