from __future__ import annotations

import pytest

from modelhost.errors import BadRequest
from modelhost.llm.params import SamplingParams


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.1),
        ("temperature", "hot"),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -2),
        ("min_p", 2.0),
        ("max_tokens", 0),
        ("max_tokens", 1.5),
        ("presence_penalty", 3.0),
        ("frequency_penalty", -2.5),
        ("repetition_penalty", 0.0),
        ("stop", [1, 2]),
        ("stop", ["x"] * 17),
        ("seed", "abc"),
        ("ignore_eos", "yes"),
    ],
)
def test_invalid_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(BadRequest) as info:
        SamplingParams(**{field: value})  # type: ignore[arg-type]
    assert info.value.extra["param"] == field
    assert field in info.value.message


def test_stop_accepts_a_string_and_drops_empty_ones() -> None:
    assert SamplingParams(stop="END").stop == ["END"]  # type: ignore[arg-type]
    assert SamplingParams(stop=["", "a"]).stop == ["a"]


def test_from_mapping_ignores_unknown_and_null_fields() -> None:
    params = SamplingParams.from_mapping(
        {"temperature": 0, "top_p": None, "messages": []}, max_tokens=7, temperature=0.5
    )
    assert params.temperature == 0 and params.top_p == 1.0 and params.max_tokens == 7
    assert params.greedy and not params.has_penalties
