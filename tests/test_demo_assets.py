"""The demo model's HF folder: converted from the packaged GGUF, loadable offline the way the
seed tutorial's model.py loads it, and prepared only once."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from modelhost.demo_assets import (
    MARKER_NAME,
    DemoAssets,
    DemoAssetsError,
    prepare_demo_assets,
    prepare_in_child,
)

pytestmark = pytest.mark.slow


def test_demo_assets_load_generate_and_are_reused(demo_assets: DemoAssets) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    assert demo_assets.gguf_path.is_file()
    assert demo_assets.gguf_path.stat().st_size > 90_000_000
    marker = demo_assets.hf_dir / MARKER_NAME
    assert marker.is_file()

    tokenizer = AutoTokenizer.from_pretrained(demo_assets.hf_dir)
    assert tokenizer.chat_template
    model = AutoModelForCausalLM.from_pretrained(demo_assets.hf_dir)
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    messages = [{"role": "user", "content": "Who is Einstein?"}]
    out: Any = generator(messages, max_new_tokens=20, do_sample=False)
    answer = out[0]["generated_text"][-1]["content"]
    assert isinstance(answer, str)
    assert answer.strip()
    # Greedy decoding of a correctly converted model talks about him; garbage would not.
    assert any(word in answer.lower() for word in ("einstein", "physic", "scientist")), answer

    # A second call is a no-op: no re-conversion, no re-hash, marker untouched.
    marker_mtime = marker.stat().st_mtime_ns
    weights_mtime = (demo_assets.hf_dir / "model.safetensors").stat().st_mtime_ns
    started = time.monotonic()
    again = prepare_demo_assets(demo_assets.hf_dir.parent, progress=False)
    assert time.monotonic() - started < 5
    assert again == demo_assets
    assert marker.stat().st_mtime_ns == marker_mtime
    assert (demo_assets.hf_dir / "model.safetensors").stat().st_mtime_ns == weights_mtime


def test_prepared_in_a_child_process(demo_assets: DemoAssets) -> None:
    """What `modelhost demo` calls, so that its serving process never holds the conversion's
    torch and transformers: `python -m modelhost.demo_assets` in a child, same folders."""
    assert prepare_in_child(demo_assets.hf_dir.parent) == demo_assets


def test_a_failing_child_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(DemoAssetsError, match="exit code 1"):
        prepare_in_child(blocker / "dest")
