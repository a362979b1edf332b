"""The gcd decoder: exactly the model restricted to the grammar's allowed tokens, then the sampling warpers."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from anydecode.algorithms.grammar import forget_asap_state, toy_vocabulary
from anydecode.algorithms.grammar.exact import language_strings, tokenizations, transform_distribution
from anydecode.algorithms.sampling.warpers import warp_logits
from anydecode.conformance import ToyModel, toy_context
from anydecode.registry import get_decoder, get_registry

ABC = toy_vocabulary(["a", "b", "c", "ab", None])
words = st.lists(st.text("abc", min_size=1, max_size=4), min_size=1, max_size=5, unique=True)


def gcd_reference(model, regex, prompt):
    """P(t | w) renormalised over the tokens that keep w a prefix of a sentence (EOS when w is one)."""
    strings = language_strings(regex)
    eos = 4

    def step(gen):
        text = b"".join(ABC.token_bytes[t] for t in gen).decode()
        ok = np.zeros(5, dtype=bool)
        for tid in range(4):
            piece = ABC.token_bytes[tid].decode()
            ok[tid] = any(s.startswith(text + piece) for s in strings)
        ok[eos] = text in strings
        p = model.probs(list(prompt) + list(gen)) * ok
        return p / p.sum()

    out = {}
    stack = [((), 1.0)]
    while stack:
        gen, mass = stack.pop()
        if gen and gen[-1] == eos:
            out[gen] = mass
            continue
        p = step(gen)
        for t in np.nonzero(p)[0]:
            stack.append((gen + (int(t),), mass * p[t]))
    return out


@given(strings=words, seed=st.integers(0, 1000), engine=st.sampled_from(["llguidance", "outlines"]))
@settings(max_examples=20, deadline=None)
def test_gcd_is_the_model_restricted_to_allowed_tokens(strings, seed, engine):
    regex = "|".join(strings)
    model = ToyModel.seeded(5, seed=seed, eos_token_id=4)
    gcd = get_decoder("gcd")
    config = gcd.configure({"grammar": regex, "grammar_format": "regex", "engine": engine})
    transform = gcd.transform(config, toy_context(model, [[1]], 8, tokenizer=ABC))
    dist = transform_distribution(transform, model.probs, (1,), 8, [4])
    expected = gcd_reference(model, regex, (1,))
    if engine == "outlines":  # outlines allows every tokenization; llguidance only canonical forced ones
        assert set(dist) == set(expected)
        assert max(abs(dist[k] - expected[k]) for k in expected) < 1e-12
    assert set(dist) <= set(tokenizations(language_strings(regex), ABC))
    assert abs(sum(dist.values()) - 1) < 1e-12


def test_sampling_settings_apply_after_the_mask():
    model = ToyModel(5, default=[0.1, 0.2, 0.3, 0.15, 0.25], eos_token_id=4)
    gcd = get_decoder("gcd")
    config = gcd.configure({"grammar": "a|b|ab", "grammar_format": "regex", "engine": "outlines",
                            "temperature": 0.7, "top_k": 2})
    transform = gcd.transform(config, toy_context(model, [[]], 4, tokenizer=ABC))
    row = transform.start([])
    out = transform.apply(row, [], model.logits([]))
    masked = model.logits([]).masked_fill(torch.tensor([False, False, True, False, True]), float("-inf"))
    assert torch.equal(out, warp_logits(masked, config))
    assert torch.isfinite(out).sum() == 2  # top-k keeps 2 of the 3 allowed tokens, never a forbidden one


def test_gcd_and_asap_are_registered_with_both_engines():
    registry = get_registry()
    assert {"gcd", "asap"} <= set(registry.decoders())
    assert {"llguidance", "outlines"} <= set(registry.items("grammar_engine"))
    assert registry.decoder("asap").source == "anydecode.builtin.grammar"


def test_batched_rows_each_follow_their_grammar_state():
    forget_asap_state()
    model = ToyModel.seeded(5, seed=3, eos_token_id=4)
    for name in ("gcd", "asap"):
        dec = get_decoder(name)
        config = dec.configure({"grammar": 'start: "ab" "c"* | "ba"', "seed": 5})
        result = dec.run(config, toy_context(model, [[0], [1], [2]], 6, tokenizer=ABC))
        for seq, reason in zip(result.sequences, result.finish_reasons):
            text = b"".join(ABC.token_bytes[t] for t in seq if t != 4).decode()
            assert reason in ("stop", "length")
            assert (text.startswith("ab") and set(text[2:]) <= {"c"}) or text in ("ba", "b")
            if reason == "stop":
                assert text == "ba" or (text.startswith("ab") and set(text[2:]) <= {"c"})


def test_greedy_gcd_picks_the_most_likely_allowed_token():
    model = ToyModel(5, default=[0.1, 0.2, 0.5, 0.15, 0.05], eos_token_id=4)
    gcd = get_decoder("gcd")
    result = gcd.run(gcd.configure({"grammar": "a|ab", "grammar_format": "regex", "temperature": 0}),
                     toy_context(model, [[]], 4, tokenizer=ABC))
    assert result.sequences == [[3, 4]]  # "ab" (0.15) beats "a" (0.1); "c" (0.5) is forbidden
    assert result.finish_reasons == ["stop"]


def test_masking_keeps_dtype_and_never_touches_the_input():
    from anydecode.algorithms.grammar.transforms import restrict

    mask = np.array([True, False, True, False])
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        logits = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=dtype)
        out = restrict(logits, mask)
        assert out.dtype == dtype and out.tolist() == [1.0, float("-inf"), 3.0, float("-inf")]
        assert logits.tolist() == [1.0, 2.0, 3.0, 4.0]
    strided = torch.arange(8, dtype=torch.float32)[::2]
    assert restrict(strided, mask).tolist() == [0.0, float("-inf"), 4.0, float("-inf")]
