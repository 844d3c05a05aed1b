async def predict(payload_dict: dict, **kwargs):
    raise ValueError("the model does not like " + str(payload_dict.get("x")))
