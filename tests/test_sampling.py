"""Sampling parameters change the answer the way their names say (not only that seeds repeat)."""

import pytest

from mlx_minicpmv import stream_generate

QUESTION = [{"role": "user", "content": "The quick brown fox?"}]


def tokens(tiny, **options):
    model, processor = tiny.load()
    return [r.token for r in stream_generate(model, processor, QUESTION, max_tokens=12, **options)]


@pytest.fixture(scope="module")
def greedy(tiny):
    return tokens(tiny, temperature=0.0)


def test_hot_sampling_differs_from_greedy(tiny, greedy):
    """What makes the tests below mean something: at temperature 1 the random model's answer
    is not the greedy one, for any of the seeds they use."""
    for seed in range(3):
        assert tokens(tiny, temperature=1.0, seed=seed) != greedy


@pytest.mark.parametrize("option", [dict(top_k=1), dict(min_p=1.0), dict(top_p=1e-6)],
                         ids=["top_k=1", "min_p=1", "top_p=1e-6"])
def test_a_filter_that_keeps_one_token_is_greedy(tiny, greedy, option):
    for seed in range(3):
        assert tokens(tiny, temperature=1.0, seed=seed, **option) == greedy


def test_repetition_penalty_keeps_recent_tokens_out(tiny, greedy):
    """mlx-lm's penalty looks at the last 20 tokens, prompt included: a large one keeps every
    token of the answer out of the 20 before it."""
    model, processor = tiny.load()
    prompt = processor(QUESTION).input_ids.reshape(-1).tolist()

    def repeats(answer):
        sequence = prompt + answer
        return [t for i, t in enumerate(answer) if t in sequence[len(prompt) + i - 20: len(prompt) + i]]

    assert repeats(greedy), "the greedy answer repeats itself, or this test means nothing"
    assert repeats(tokens(tiny, temperature=0.0, repetition_penalty=1000.0)) == []


def test_the_checkpoint_defaults_apply_when_no_option_is_given(tiny, greedy):
    """generation_config.json's sampling settings are what an answer uses by default."""
    _, processor = tiny.load()
    saved = processor.generation_config
    try:
        processor.generation_config = dict(saved, do_sample=False)
        assert tokens(tiny, seed=0) == greedy
        processor.generation_config = dict(saved, do_sample=True, temperature=1.0, top_k=1, top_p=1.0)
        assert tokens(tiny, seed=0) == greedy
        processor.generation_config = dict(saved, do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
        assert tokens(tiny, seed=0) != greedy
        assert tokens(tiny, seed=0, temperature=0.0) == greedy, "an option given wins over the default"
    finally:
        processor.generation_config = saved
