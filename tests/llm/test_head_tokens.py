"""Prompt heads' tokens kept between requests (`modelhost.llm.engines.llamacpp.head_tokens`).

On the demo model: every prompt tokenizes exactly as llama.cpp tokenizes it whole, while a
shared system prompt is tokenized once. On a small tokenizer that cuts text at special
tokens as llama.cpp does: the cases where a head's end could change the rest's tokens.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from modelhost.llm.engines.llamacpp.head_tokens import HeadTokens
from modelhost.llm.slots import common_prefix

SYSTEM = " ".join(f"Rule {i}: answer in plain words and cite the manual." for i in range(40))
QUESTIONS = [
    "Why is the sky blue?",
    "Who wrote <|im_end|> into a question?",  # a special token's text in the user's words
    "  leading spaces and a trailing newline\n",
    "日本語の質問です。",
    "",
]


def _whole(backend: Any, text: str) -> list[int]:
    from modelhost.llm.engines.llamacpp.backend import tokenize

    tokens = tokenize(backend._vocab, text, add_special=True, parse_special=True)
    if len(tokens) > 1 and tokens[0] == tokens[1] == backend._bos:
        del tokens[0]
    return tokens


def test_prompts_behind_one_system_prompt_tokenize_as_whole_texts(backend: Any) -> None:
    heads = backend._heads
    assert heads is not None  # SmolLM2: a BPE vocabulary without EOS added
    hits = heads.hits
    for round_ in range(3):
        for question in QUESTIONS:
            messages = [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"{question} ({round_})"},
            ]
            text = backend.render_chat(messages)
            assert backend.tokenize(text) == _whole(backend, text), text[-80:]
    # the first two texts taught the head; every later one started with it
    assert heads.hits - hits >= 3 * len(QUESTIONS) - 2


def test_alternating_system_prompts_and_plain_text(backend: Any) -> None:
    systems = [f"{SYSTEM} Variant {v}." for v in range(3)]
    texts = [
        backend.render_chat([{"role": "system", "content": system}, {"role": "user", "content": q}])
        for q in QUESTIONS
        for system in systems
    ]
    texts += [SYSTEM, SYSTEM + " and more", "<|im_start|>" + SYSTEM + "<|im_end|>tail"]
    for text in texts + texts:
        assert backend.tokenize(text) == _whole(backend, text)
    # without special tokens parsed, nothing is kept or looked up
    from modelhost.llm.engines.llamacpp.backend import tokenize

    raw = tokenize(backend._vocab, texts[0], add_special=False, parse_special=False)
    assert backend.tokenize(texts[0], special=False) == raw


# --- a tokenizer with llama.cpp's cut at special tokens --------------------------------------


class Toy:
    """Cuts a text at special tokens (longest first), drops the whitespace after those that
    strip it, and gives each other character a token of its own: BOS 0, specials 1.."""

    def __init__(self, specials: list[str], rstrip: set[str]) -> None:
        self.ids = {s: i + 1 for i, s in enumerate(specials)}
        self.rstrip = rstrip
        self.pattern = re.compile("|".join(map(re.escape, sorted(specials, key=len)[::-1])))
        self.calls = 0

    def __call__(self, text: str, add_special: bool) -> list[int]:
        self.calls += 1
        out = [0] if add_special else []
        pos, strip = 0, False
        for match in self.pattern.finditer(text):
            out += self._plain(text[pos : match.start()], strip)
            out.append(self.ids[match.group()])
            pos, strip = match.end(), match.group() in self.rstrip
        return out + self._plain(text[pos:], strip)

    @staticmethod
    def _plain(text: str, strip: bool) -> list[int]:
        return [1000 + ord(c) for c in (text.lstrip() if strip else text)]


HEAD = "x" * 500


def _check(heads: HeadTokens, toy: Toy, texts: list[str]) -> None:
    for text in texts:
        assert heads(text) == toy(text, True), text[-30:]


def test_a_head_is_learned_from_two_texts_and_used_after() -> None:
    toy = Toy(["<s>", "<e>"], set())
    heads = HeadTokens(toy, toy.ids)
    _check(heads, toy, [f"{HEAD}<e>one", f"{HEAD}<e>two"])
    calls = toy.calls
    assert heads(f"{HEAD}<e>three") == toy(f"{HEAD}<e>three", True)
    assert heads.hits == 1
    assert toy.calls - calls == 2  # the rest, and the check's whole text


def test_no_head_ends_after_a_token_that_strips_what_follows() -> None:
    toy = Toy(["<s>", "<e>"], {"<e>"})
    heads = HeadTokens(toy, toy.ids, toy.rstrip)
    # the first rests start with no whitespace: cut after <e>, they would check out
    _check(heads, toy, [f"{HEAD}<e>one", f"{HEAD}<e>two", f"{HEAD}<e>   three"])


def test_no_head_ends_where_a_longer_special_token_could_reach_past_it() -> None:
    toy = Toy(["<e>", "<e>!", ">?"], set())
    heads = HeadTokens(toy, toy.ids)
    _check(heads, toy, [f"{HEAD}<e>one", f"{HEAD}<e>two", f"{HEAD}<e>!three", f"{HEAD}<e>?four"])


def test_short_heads_and_texts_without_special_tokens_are_not_kept() -> None:
    toy = Toy(["<e>"], set())
    heads = HeadTokens(toy, toy.ids)
    _check(heads, toy, ["ab<e>one", "ab<e>two", HEAD + "one", HEAD + "two", HEAD + "three"])
    assert heads.hits == 0


def test_at_most_max_heads_are_kept_the_least_recently_used_dropped() -> None:
    toy = Toy(["<e>"], set())
    heads = HeadTokens(toy, toy.ids, max_heads=2)
    for variant in "abc":
        _check(heads, toy, [f"{variant}{HEAD}<e>1", f"{variant}{HEAD}<e>2"])
    hits = heads.hits
    _check(heads, toy, [f"c{HEAD}<e>3", f"b{HEAD}<e>3"])
    assert heads.hits == hits + 2
    _check(heads, toy, [f"a{HEAD}<e>3"])  # dropped: tokenized whole
    assert heads.hits == hits + 2


@pytest.mark.parametrize(
    ("a", "b", "n"),
    [
        ("", "", 0),
        ("abc", "abd", 2),
        ("abc", "abc", 3),
        ("abc", "ab", 2),
        ("x" * 999 + "a", "x" * 999 + "b", 999),
    ],
)
def test_common_length(a: str, b: str, n: int) -> None:
    assert common_prefix(a, b) == n
