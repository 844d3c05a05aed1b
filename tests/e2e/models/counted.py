"""A model with metrics of its own (prometheus_client), exported through the gateway."""

from prometheus_client import Counter, Histogram

PREDICTIONS = Counter("counted_predictions", "Predictions made.", ["model"])
SIZES = Histogram("counted_payload_keys", "Keys per payload.", buckets=(1, 2, 5))


async def predict(payload_dict: dict, **kwargs):
    PREDICTIONS.labels(model="mine").inc()
    SIZES.observe(len(payload_dict))
    return payload_dict
