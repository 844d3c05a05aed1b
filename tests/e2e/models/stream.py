import asyncio


async def predict(payload_dict: dict, **kwargs):
    for i in range(int(payload_dict.get("n", 3))):
        await asyncio.sleep(0.01)
        yield f"piece {i}\n"
