"""transformers: any Hugging Face causal-LM folder, batched on CPU or CUDA.

`engine.TransformersEngine` (the engine front over `loop.BatchLoop`, one thread running
the model), `batch` (left-padded prompts and the KV cache of the running rows), `text` (the
folder's tokenizer and chat template: the text side, which vLLM uses too). Importing
`engine`, `loop` or `batch` imports torch.
"""
