calls = 0


def init(model_meta=None, *args, **kwargs):
    global calls
    calls = 0


def predict(payload_dict: dict, **kwargs):
    global calls
    calls += 1
    return {"sum": sum(payload_dict["values"]), "calls": calls}
