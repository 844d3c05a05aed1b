from __future__ import annotations

import numpy as np

from modelhost.llm.params import SamplingParams
from modelhost.llm.sampling import TokenSampler, greedy_choices


def logits(seed: int = 0, vocab: int = 1000) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 3, size=vocab).astype(np.float32)


def draws(params: SamplingParams, n: int = 50) -> list[int]:
    sampler = TokenSampler(params)
    return [sampler.sample(logits(i)) for i in range(n)]


def test_greedy_rows_take_the_argmax() -> None:
    matrix = np.stack([logits(1), logits(2)])
    assert greedy_choices(matrix) == [int(matrix[0].argmax()), int(matrix[1].argmax())]
    assert TokenSampler(SamplingParams(temperature=0)).simple_greedy


def test_seed_reproduces_and_differs_between_seeds() -> None:
    params = SamplingParams(temperature=1.0, seed=7)
    assert draws(params) == draws(params)
    assert draws(params) != draws(SamplingParams(temperature=1.0, seed=8))


def test_top_k_one_and_tiny_top_p_are_greedy() -> None:
    expected = [int(logits(i).argmax()) for i in range(50)]
    assert draws(SamplingParams(temperature=1.0, top_k=1, seed=1)) == expected
    assert draws(SamplingParams(temperature=1.0, top_p=1e-6, seed=1)) == expected


def test_top_k_limits_the_candidates() -> None:
    row = logits(3)
    top5 = set(np.argsort(row)[-5:].tolist())
    sampler = TokenSampler(SamplingParams(temperature=5.0, top_k=5, seed=3))
    assert {sampler.sample(row.copy()) for _ in range(200)} <= top5


def test_draws_follow_the_distribution() -> None:
    row = np.full(10, -50.0, dtype=np.float32)
    row[2], row[7] = 0.0, np.log(3.0)  # p(2) = 0.25, p(7) = 0.75
    sampler = TokenSampler(SamplingParams(temperature=1.0, seed=11))
    picks = [sampler.sample(row.copy()) for _ in range(4000)]
    assert set(picks) == {2, 7}
    assert 0.70 < picks.count(7) / len(picks) < 0.80


def test_penalties_push_down_generated_tokens() -> None:
    row = np.zeros(10, dtype=np.float32)
    row[4] = 1.0
    sampler = TokenSampler(SamplingParams(temperature=0, frequency_penalty=0.8))
    sampler.accept(4)
    sampler.accept(4)
    assert sampler.sample(row.copy()) != 4
    repeat = TokenSampler(SamplingParams(temperature=0, repetition_penalty=1.5))
    repeat.accept(4)
    assert repeat.sample(row.copy()) == 4  # 1.0 / 1.5 still beats 0


def test_top_k_search_matches_a_full_sort() -> None:
    from modelhost.llm.sampling import _top_k

    for seed in range(20):
        row = logits(seed, vocab=49152)
        for k in (1, 5, 40, 1000):
            assert set(_top_k(row, k).tolist()) == set(np.argsort(row)[-k:].tolist())


def test_nucleus_search_matches_a_full_sort() -> None:
    from modelhost.llm.sampling import _nucleus

    for seed in range(10):
        row = logits(seed, vocab=49152) * (seed + 1) / 4
        probs = np.exp(row - row.max())
        ids = np.arange(row.size)
        for top_p in (0.1, 0.5, 0.9, 0.99):
            got, _ = _nucleus(ids, probs, top_p)
            order = np.argsort(-probs, kind="stable")
            cumulative = np.cumsum(probs[order], dtype=np.float64)
            cut = int(np.searchsorted(cumulative, top_p * cumulative[-1])) + 1
            assert set(got.tolist()) == set(order[:cut].tolist())


def test_blocked_draw_matches_the_weights() -> None:
    from modelhost.llm.sampling import _categorical

    weights = np.full(5000, 1e-9, dtype=np.float32)
    weights[[10, 2047, 4999]] = [1.0, 2.0, 1.0]
    rng = np.random.default_rng(5)
    picks = [_categorical(weights, rng.random()) for _ in range(4000)]
    assert set(picks) <= {10, 2047, 4999}
    assert 0.45 < picks.count(2047) / len(picks) < 0.55
