import logging

log = logging.getLogger("model.logs_in_predict")


def predict(payload_dict: dict, **kwargs):
    log.warning("predict saw %s", payload_dict.get("tag"))
    if payload_dict.get("fail"):
        raise ValueError("asked to fail")
    return {"ok": True}
