from pathlib import Path

greeting = None


async def init(model_meta=None, *args, **kwargs):
    global greeting
    greeting = (Path(model_meta.cache_dir) / "greeting" / "hello.txt").read_text()


async def predict(payload_dict: dict, **kwargs):
    return {"greeting": greeting, "name": payload_dict.get("name")}
