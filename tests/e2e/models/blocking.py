import time


async def predict(payload_dict: dict, **kwargs):
    # Blocks the event loop, like the seed's transformers pipeline call inside async def.
    time.sleep(float(payload_dict.get("sleep", 2)))
    return {"slept": payload_dict.get("sleep", 2)}
