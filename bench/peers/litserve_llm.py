"""Peer: LitServe with the same engine (llama-cpp-python on the demo GGUF) behind its
OpenAI spec, streaming. Run: python litserve_llm.py GGUF PORT

LitServe's OpenAI spec hands `predict` one request at a time per worker (llama-cpp-python's
high-level `Llama` decodes one sequence), so this is "the same engine where it fits": one
worker, one stream at a time, others queued. EOS is masked until max_tokens (the workload's
``ignore_eos``), and the repeat penalty is off, so it does the same greedy work.
"""

import sys

import litserve as ls
from litserve.specs.openai import OpenAISpec
from llama_cpp import Llama, LogitsProcessorList, MinTokensLogitsProcessor


class LlamaChatAPI(ls.LitAPI):
    def __init__(self, gguf: str) -> None:
        super().__init__()
        self.gguf = gguf

    def setup(self, device):
        self.llm = Llama(model_path=self.gguf, n_ctx=4096, verbose=False)

    def predict(self, request):
        max_tokens = request.max_completion_tokens or request.max_tokens or 128
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        keep_going = MinTokensLogitsProcessor(max_tokens, self.llm.token_eos())
        stream = self.llm.create_chat_completion(
            messages=messages,
            max_tokens=max_tokens,
            temperature=request.temperature or 0.0,
            repeat_penalty=1.0,
            logits_processor=LogitsProcessorList([keep_going]),
            stream=True,
        )
        generated = 0
        for chunk in stream:  # one chunk per generated token
            text = chunk["choices"][0]["delta"].get("content")
            if text is not None:
                generated += 1
                # LitServe puts the last chunk's counts in the stream's final usage.
                yield {"content": text, "completion_tokens": generated, "total_tokens": generated}


if __name__ == "__main__":
    api = LlamaChatAPI(sys.argv[1])
    server = ls.LitServer(api, spec=OpenAISpec(), accelerator="cpu", workers_per_device=1)
    server.run(port=int(sys.argv[2]), generate_client_file=False)
