"""A sentence-transformers BERT folder (all-MiniLM-L6-v2) written as a GGUF, for testing the
llama.cpp embedding backend: no GGUF embedding model is packaged on the registry, and the
conversion is small. It follows llama.cpp's own converter for BERT (``convert_hf_to_gguf``,
``BertModel``): architecture ``bert``, mean pooling, WordPiece vocabulary in "phantom space"
form (a word-initial piece gets ``▁``, a ``##`` continuation loses its marks), f32 tensors
renamed with gguf-py's `TensorNameMap`.

    python -m compat.bert_gguf FOLDER OUT.gguf
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import gguf
import numpy as np

POOLING_MEAN = 1
SKIPPED = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")


def convert(folder: Path, out: Path) -> Path:
    from safetensors.numpy import load_file

    config = json.loads((folder / "config.json").read_text())
    blocks = int(config["num_hidden_layers"])
    writer = gguf.GGUFWriter(str(out), "bert")
    writer.add_block_count(blocks)
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(int(config["num_attention_heads"]))
    writer.add_layer_norm_eps(float(config["layer_norm_eps"]))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType(POOLING_MEAN))
    _vocab(writer, folder, int(config.get("type_vocab_size", 2)))

    names = gguf.TensorNameMap(gguf.MODEL_ARCH.BERT, blocks)
    for name, tensor in load_file(str(folder / "model.safetensors")).items():
        name = name.removeprefix("bert.")
        if name in SKIPPED:
            continue
        mapped = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            raise ValueError(f"no GGUF name for tensor {name!r}")
        writer.add_tensor(mapped, tensor.astype(np.float32))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _vocab(writer: gguf.GGUFWriter, folder: Path, type_count: int) -> None:
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    vocab: dict[str, int] = tokenizer["model"]["vocab"]
    special = {t["content"] for t in tokenizer.get("added_tokens", []) if t.get("special")}
    tokens, kinds = [], []
    for token, _ in sorted(vocab.items(), key=lambda item: item[1]):
        if token in special:
            tokens.append(token)
            kinds.append(gguf.TokenType.CONTROL)
        else:
            tokens.append(token[2:] if token.startswith("##") else "\u2581" + token)
            kinds.append(gguf.TokenType.NORMAL)
    writer.add_token_type_count(type_count)
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("jina-v2-en")  # what llama.cpp's converter names this tokenizer
    writer.add_token_list(tokens)
    writer.add_token_types(kinds)
    ids = {name: vocab[name] for name in ("[CLS]", "[SEP]", "[UNK]", "[PAD]", "[MASK]")}
    writer.add_bos_token_id(ids["[CLS]"])
    writer.add_eos_token_id(ids["[SEP]"])
    writer.add_unk_token_id(ids["[UNK]"])
    writer.add_sep_token_id(ids["[SEP]"])
    writer.add_pad_token_id(ids["[PAD]"])
    writer.add_mask_token_id(ids["[MASK]"])
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(True)
    writer.add_add_sep_token(False)
    lowercase = bool((tokenizer.get("normalizer") or {}).get("lowercase", True))
    writer.add_bool("tokenizer.ggml.normalizer.lowercase", lowercase)


if __name__ == "__main__":
    convert(Path(sys.argv[1]), Path(sys.argv[2]))
