"""Search decoders on llama.cpp (embedded model): the multi-sequence session and dbs/beam/deal/best_of_n."""

from __future__ import annotations

import math

import anydecode.plugins.llamacpp as L
import pytest
import torch
from anydecode.algorithms.search.rewards import RewardError
from anydecode.plugins.llamacpp.multiseq import MultiSequenceSession, multi_session_factory
from anydecode.plugins.llamacpp.session import LlamaSession

pytestmark = pytest.mark.integration

PROMPT = "<|im_start|>user\nWrite one sentence using: sea, boat, storm.<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def llm():
    llm = L.load_default(n_ctx=1024)
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def prompt_ids(llm):
    return [int(t) for t in llm.tokenize(PROMPT.encode(), add_bos=False, special=True)]


def rescore(llm, prompt, tokens):
    """Sum of log-probabilities of ``tokens`` after ``prompt`` on the Llama's own single-sequence context."""
    session = LlamaSession(llm)
    first = session.start(prompt)[0]
    logits = [first]
    if len(tokens) > 1:
        logits += list(session.append([tokens[:-1]])[0])
    return sum(float(torch.log_softmax(lg.double(), -1)[t]) for lg, t in zip(logits, tokens))


def test_forked_rows_continue_as_the_single_sequence_context_does(llm, prompt_ids):
    session, logits = multi_session_factory(llm, [prompt_ids], 8)(3)
    try:
        single = LlamaSession(llm)
        ref = single.start(prompt_ids)[0]
        assert int(logits[0].argmax()) == int(ref.argmax())
        session.select([0, 0, 0])
        ids = session.sequence_ids()
        assert len(set(ids)) == 3
        tokens = [int(ref.argmax()), 504, 3426]
        out = session.append(torch.tensor(tokens).unsqueeze(1))[:, -1]
        for row, token in enumerate(tokens):
            single.truncate(len(prompt_ids))
            expected = single.append([[token]])[0, -1]
            assert int(out[row].argmax()) == int(expected.argmax())
            top = torch.topk(expected, 5).indices
            assert torch.allclose(torch.log_softmax(out[row], -1)[top], torch.log_softmax(expected, -1)[top],
                                  atol=0.35)  # Q4_1 batch-shape noise, see research/hf_llamacpp.md B4
        assert [session.tokens(r)[-1] for r in range(3)] == tokens
    finally:
        session.close()


def test_select_and_truncate_keep_sequence_ids_bounded(llm, prompt_ids):
    session, _ = multi_session_factory(llm, [prompt_ids], 16)(4)
    try:
        session.select([0, 0, 0, 0])
        for step in range(6):
            session.append(torch.full((4, 1), 504 + step))
            session.select([step % 4, step % 4, 1, 3])
            assert len(set(session.sequence_ids())) == 4 and max(session.sequence_ids()) < session.n_seq_max
        length = session.length
        session.truncate(length - 2)
        assert session.length == length - 2
        out = session.append(torch.full((4, 1), 11))
        assert out.shape == (4, 1, session.vocab_size)
    finally:
        session.close()


def test_a_session_larger_than_llama_cpp_allows_is_refused(llm):
    from anydecode import RuntimeAdapterError

    with pytest.raises(RuntimeAdapterError, match="holds 1 to"):
        MultiSequenceSession(llm, 1000, 512)


def test_dbs_through_generate_returns_distinct_sequences_with_true_scores(llm, prompt_ids):
    out = L.generate(llm, prompt_ids, decoder="dbs", max_new_tokens=12, num_beams=6, num_beam_groups=3,
                     diversity_penalty=1.0, num_return_sequences=3, length_penalty=0.0)
    seqs = [tuple(s.token_ids) for s in out.sequences]
    assert len(seqs) == 3 and len(set(seqs)) == 3
    scores = [s.score for s in out.sequences]
    assert scores == sorted(scores, reverse=True)
    first = out.sequences[0]
    # the best sequence comes from the first group, whose score carries no diversity penalty
    assert math.isclose(first.score, rescore(llm, prompt_ids, first.token_ids), abs_tol=0.5)
    assert out.stats["forward_passes"] <= 12


def test_beam_scores_match_single_sequence_rescoring(llm, prompt_ids):
    out = L.generate(llm, prompt_ids, decoder="beam", max_new_tokens=10, num_beams=3, num_return_sequences=3,
                     length_penalty=0.0)
    for seq in out.sequences:
        assert math.isclose(seq.score, rescore(llm, prompt_ids, seq.token_ids), abs_tol=0.5)


def test_deal_with_lam_zero_equals_beam(llm, prompt_ids):
    beam = L.generate(llm, prompt_ids, decoder="beam", max_new_tokens=10, num_beams=2, num_return_sequences=2)
    deal = L.generate(llm, prompt_ids, decoder="deal", max_new_tokens=10, beam=2, k=4, lam=0.0,
                      num_return_sequences=2)
    assert [s.token_ids for s in deal.sequences] == [s.token_ids for s in beam.sequences]


def test_deal_keyword_reward_covers_the_keywords(llm, prompt_ids):
    out = L.generate(llm, prompt_ids, decoder="deal", max_new_tokens=24, reward="keywords",
                     keywords="sea,boat,storm", beam=2, k=4, lookahead=4, lam=2.0)
    text = out.text.lower()
    assert sum(k in text for k in ("sea", "boat", "storm")) >= 2
    assert out.stats["reward_calls"] > 0 and out.stats["lookahead_passes"] > 0


def test_best_of_n_returns_its_best_sample(llm, prompt_ids):
    out = L.generate(llm, prompt_ids, decoder="best_of_n", max_new_tokens=16, num_samples=4, seed=3,
                     temperature=0.9, reward="keywords", keywords="sea,boat,storm")
    rewards = out.stats["sample_rewards"]
    assert len(rewards) == 4 and out.sequences[0].score == max(rewards)


def fail_on_storm(text: str) -> float:
    if "storm" in text.lower():
        raise RuntimeError("storms are not allowed")
    return 0.0


def test_a_failing_reward_stops_cleanly_and_the_llama_stays_usable(llm, prompt_ids):
    with pytest.raises(RewardError, match=r"reward 'callable .*fail_on_storm' failed on text '.*storm"):
        L.generate(llm, prompt_ids, decoder="deal", max_new_tokens=16, reward="callable",
                   function=f"{__name__}:fail_on_storm", beam=2, k=4, lookahead=6)
    again = L.generate(llm, prompt_ids, decoder="beam", max_new_tokens=4, num_beams=2)
    assert len(again.sequences[0].token_ids) >= 1
