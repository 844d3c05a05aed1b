"""``prt.regions``: the server (a *region* in Practicus AI's SDK) and its lists."""

from modelhost.client.region import (
    ModelDeployment,
    ModelInfo,
    ModelPrefix,
    PrtList,
    Region,
    get_region,
)


def current_region() -> Region:
    """The region of ``MODELHOST_URL`` or of the last login."""
    return get_region()


def get_default_region() -> Region:
    """The region of ``MODELHOST_URL`` or of the last login."""
    return get_region()


__all__ = [
    "ModelDeployment",
    "ModelInfo",
    "ModelPrefix",
    "PrtList",
    "Region",
    "current_region",
    "get_default_region",
    "get_region",
]
