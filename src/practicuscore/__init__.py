"""Drop-in for Practicus AI's SDK (like Pillow provides `PIL`), backed by modelhost.

``import practicuscore as prt`` then ``prt.models.get_session_token(...)``,
``prt.models.deploy(...)``, ``prt.get_region()`` (also ``current_region()``,
``get_default_region()``, ``prt.regions``);
``from practicuscore.gen_ai import PrtLangRequest``. Only what modelhost implements is
provided. Submodules load on first use so that a worker's ``model.py`` importing
`practicuscore.gen_ai` does not pull in the HTTP client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from modelhost import __version__

if TYPE_CHECKING:
    from practicuscore import gen_ai, models, regions
    from practicuscore.regions import current_region, get_default_region, get_region

__all__ = [
    "__version__",
    "current_region",
    "gen_ai",
    "get_default_region",
    "get_region",
    "models",
    "regions",
]
_REGION_FUNCTIONS = {"get_region", "current_region", "get_default_region"}


def __getattr__(name: str) -> Any:
    if name in {"gen_ai", "models", "regions"}:
        return importlib.import_module(f"practicuscore.{name}")
    if name in _REGION_FUNCTIONS:
        return getattr(importlib.import_module("practicuscore.regions"), name)
    raise AttributeError(f"module 'practicuscore' has no attribute {name!r}")
