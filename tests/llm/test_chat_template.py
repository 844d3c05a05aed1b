from __future__ import annotations

import pytest

from modelhost.errors import BadRequest
from modelhost.llm.chat_template import ChatTemplate

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def test_chatml_fallback() -> None:
    text = ChatTemplate(None).render(MESSAGES)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert (
        not ChatTemplate(None).render(MESSAGES, add_generation_prompt=False).endswith("assistant\n")
    )


def test_hf_style_template_with_helpers() -> None:
    source = (
        "{{ bos_token }}{% for m in messages %}"
        "{% if m['role'] not in ['system', 'user'] %}{{ raise_exception('bad role') }}{% endif %}"
        "[{{ m['role'] }}]{{ m['content'] | tojson }}\n{% endfor %}"
    )
    template = ChatTemplate(source, bos_token="<s>")
    assert template.render(MESSAGES) == '<s>[system]"Be brief."\n[user]"Hi"\n'
    with pytest.raises(BadRequest, match="bad role"):
        template.render([{"role": "tool", "content": "x"}])


def test_templates_run_sandboxed() -> None:
    template = ChatTemplate("{{ messages.__class__.__mro__ }}")
    with pytest.raises(BadRequest, match="is unsafe"):
        template.render(MESSAGES)
