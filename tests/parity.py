"""Comparing generation step by step with the reference's own ``generate``."""

import numpy as np

LOGIT_TOL = 1e-3


def log_softmax(x: np.ndarray) -> np.ndarray:
    top = x.max(-1, keepdims=True)
    return x - top - np.log(np.exp(x - top).sum(-1, keepdims=True))


def token_types(t, input_ids) -> dict:
    """4.7's reference lays out its canvas from the token types its processor returns
    (``mm_token_type_ids``: text 0, image 1, video 2); 4.6's takes none."""
    import torch

    if t.hf.config.model_type != "minicpmv4_7":
        return {}
    ids = np.asarray(input_ids)
    types = np.where(ids == t.hf.config.image_token_id, 1, np.where(ids == t.hf.config.video_token_id, 2, 0))
    return dict(mm_token_type_ids=torch.from_numpy(types))


def reference_steps(t, max_new_tokens=32, **inputs):
    """The reference's greedy tokens and each step's log-probabilities (its own cached decoding)."""
    import torch

    with torch.no_grad():
        out = t.hf.generate(**inputs, **token_types(t, inputs["input_ids"]), max_new_tokens=max_new_tokens,
                            do_sample=False, eos_token_id=None, pad_token_id=0, output_logits=True,
                            return_dict_in_generate=True)
    tokens = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    return tokens, log_softmax(torch.cat(out.logits).float().numpy())


def assert_same_steps(ours, ref_tokens, ref_logprobs):
    """Same greedy tokens, and the same log-probabilities at every step: the argmax alone hides
    small errors of one-token decode steps (a RoPE offset off by one kept the tiny models' argmax)."""
    assert [step.token for step in ours] == ref_tokens
    logprobs = np.stack([np.array(step.logprobs).reshape(-1) for step in ours])
    assert logprobs.shape == ref_logprobs.shape
    np.testing.assert_allclose(logprobs, ref_logprobs, atol=LOGIT_TOL, rtol=0)
