"""The prompts of `bench.llm`'s workloads, built deterministically from fixed text.

Long prompts are sentences drawn by a seeded `random.Random` from a fixed vocabulary, so a
run today and one next month send the same bytes, and each request's prompt differs from
its first words on (a server's prefix cache cannot skip the prefill the workload measures).
Token counts are approximate (``TOKENS_PER_WORD``, measured with the SmolLM2 tokenizer on
this text); the servers' ``usage.prompt_tokens`` gives the exact count in the results.
"""

from __future__ import annotations

import random

# SmolLM2's tokenizer on `filler_text`: 1.12-1.13 tokens per word (measured 2026-12-03).
TOKENS_PER_WORD = 1.12

_SUBJECTS = (
    "the engineer", "a small team", "the operator", "our scheduler", "the new service",
    "every worker", "the old cluster", "a patient reviewer", "the night shift", "the gateway",
    "this report", "the storage layer", "a careful tester", "the release manager",
)  # fmt: skip
_VERBS = (
    "measured", "rebuilt", "described", "replaced", "compared", "watched", "tuned",
    "documented", "restarted", "questioned", "simplified", "moved", "checked", "approved",
)  # fmt: skip
_OBJECTS = (
    "the cache", "every request", "the slow query", "a noisy machine", "the batch size",
    "the memory graph", "the network path", "each deployment", "the error budget",
    "the weekly plan", "the river data", "a stack of invoices", "the weather model",
    "the museum archive", "the train timetable", "a garden irrigation plan",
)  # fmt: skip
_TAILS = (
    "before the morning meeting", "with great care", "after the last incident",
    "during a quiet hour", "for the second time this week", "without any downtime",
    "while the customers slept", "in three small steps", "as the manual suggests",
    "under a tight deadline", "to everyone's surprise", "with a single command",
)  # fmt: skip


def filler_text(words: int, seed: int) -> str:
    """About ``words`` words of plain English sentences; the same for the same seed."""
    rng = random.Random(seed)
    out: list[str] = []
    count = 0
    while count < words:
        sentence = (
            f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} "
            f"{rng.choice(_TAILS)}."
        )
        out.append(sentence[0].upper() + sentence[1:])
        count += len(sentence.split())
    return " ".join(out)


def words_for(tokens: int) -> int:
    return max(1, round(tokens / TOKENS_PER_WORD))


def long_prompts(n: int, tokens: int, *, seed: int = 0) -> list[str]:
    """``n`` distinct user prompts of about ``tokens`` tokens: a numbered report to summarise
    (the number first, so no two prompts share more than the chat template's prefix)."""
    body = words_for(tokens) - 12
    return [
        f"Report {seed * 1000 + i}. {filler_text(body, seed * 1000 + i)}\n\n"
        "Summarise this report in one short paragraph."
        for i in range(n)
    ]


def shared_system_prompt(tokens: int) -> str:
    """One system prompt of about ``tokens`` tokens, the same for every client."""
    rules = filler_text(words_for(tokens) - 20, seed=424242)
    return (
        "You are the support assistant of a data platform. Answer briefly and politely. "
        f"Background notes follow. {rules}"
    )
