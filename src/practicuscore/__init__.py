"""Drop-in for Practicus AI's SDK (like Pillow provides `PIL`), backed by modelhost.

``import practicuscore as prt`` then ``prt.models.get_session_token(...)``,
``prt.models.deploy(...)``; ``from practicuscore.gen_ai import PrtLangRequest``. Only what
modelhost implements is provided. Submodules load on first use so that a worker's
``model.py`` importing `practicuscore.gen_ai` does not pull in the HTTP client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from modelhost import __version__

if TYPE_CHECKING:
    from practicuscore import gen_ai, models

__all__ = ["__version__", "gen_ai", "models"]


def __getattr__(name: str) -> Any:
    if name in {"gen_ai", "models"}:
        return importlib.import_module(f"practicuscore.{name}")
    raise AttributeError(f"module 'practicuscore' has no attribute {name!r}")
