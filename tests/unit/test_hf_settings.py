"""Every transformers setting is honoured or refused, by every decoder, in ``model.generate(custom_generate=...)``.

Regression tests of issue 12 on an in-process random-weight Llama: the runtime's processors (bad words,
repetition penalty, min_new_tokens on left-padded rows) and stopping criteria reach search, best-of-N and
speculative decoders; ``num_return_sequences`` works for every decoder; warpers no decoder applies are errors; a
reused ``LogitsProcessor`` starts a new request at every ``generate()`` call.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

import anydecode
import anydecode.plugins.hf as hf
from anydecode import ConfigError, LogitsTransform
from tests.helpers.tiny import tiny_llama

PROMPT = torch.tensor([[1, 5, 9, 14]])


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


def generate(model, decoder, ids=PROMPT, **kwargs):
    kwargs.setdefault("max_new_tokens", 8)
    with torch.no_grad():
        return model.generate(ids, attention_mask=torch.ones_like(ids), custom_generate=hf.generate,
                              decoder=decoder, **kwargs)


SEARCH = [("beam", {"num_beams": 3}), ("dbs", {"num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 1.0}),
          ("deal", {"decoder_config": {"beam": 2, "k": 4, "lam": 0.0}}),
          ("best_of_n", {"decoder_config": {"num_samples": 3}, "do_sample": True, "seed": 1}),
          ("iad", {}), ("prompt_lookup", {}), ("aded", {}), ("greedy", {}), ("sample", {"do_sample": True})]


@pytest.mark.parametrize("decoder,kwargs", SEARCH)
def test_a_banned_token_is_never_emitted_by_any_decoder(model, decoder, kwargs):
    free = generate(model, decoder, **kwargs)[0, PROMPT.shape[1]:].tolist()
    banned = next(t for t in free if t not in (0, 2))  # a token the decoder emits when nothing is banned
    out = generate(model, decoder, bad_words_ids=[[banned]], **kwargs)
    assert banned not in out[:, PROMPT.shape[1]:].flatten().tolist(), (decoder, banned)


class StopAfter(StoppingCriteria):
    def __init__(self, length):
        self.length = length

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), input_ids.shape[1] >= self.length, dtype=torch.bool)


@pytest.mark.parametrize("decoder,kwargs", SEARCH)
def test_a_custom_stopping_criterion_ends_every_decoder(model, decoder, kwargs):
    """best_of_n raised IndexError here (its rows are prompts x n, the criterion indexed prompts)."""
    out = generate(model, decoder, stopping_criteria=StoppingCriteriaList([StopAfter(PROMPT.shape[1] + 3)]),
                   return_dict_in_generate=True, max_new_tokens=10, **kwargs)
    generated = out.sequences[:, PROMPT.shape[1]:]
    lengths = [int((row != 0).sum()) for row in generated]
    assert max(lengths) <= 3, (decoder, generated.tolist())
    assert "stop" in out.finish_reasons


def test_repetition_penalty_reaches_beam_search_as_in_transformers(model):
    ids = torch.tensor([[1, 5, 5, 5, 9, 9, 14]])
    with torch.no_grad():
        native = model.generate(ids, attention_mask=torch.ones_like(ids), num_beams=3, max_new_tokens=10,
                                repetition_penalty=1.3, no_repeat_ngram_size=2, do_sample=False)
    ours = generate(model, "beam", ids=ids, num_beams=3, max_new_tokens=10, repetition_penalty=1.3,
                    no_repeat_ngram_size=2)
    assert ours.tolist() == native.tolist()


@pytest.mark.parametrize("decoder,kwargs", [("iad", {}), ("aded", {}), ("prompt_lookup", {}), ("speculative", {}),
                                            ("best_of_n", {"decoder_config": {"num_samples": 2}}),
                                            ("sample", {})])
def test_num_return_sequences_works_for_every_decoder(model, decoder, kwargs):
    """(transformers itself refuses num_return_sequences > 1 without sampling or beams)"""
    out = generate(model, decoder, num_return_sequences=3, do_sample=True, temperature=1.5, seed=4,
                   ids=torch.tensor([[1, 5]]), **kwargs)
    assert out.shape[0] == 3, (decoder, out.shape)
    assert len({tuple(r) for r in out.tolist()}) > 1  # three samples, not one repeated


@pytest.mark.parametrize("setting", [{"typical_p": 0.5}, {"epsilon_cutoff": 0.01}, {"eta_cutoff": 0.01}])
def test_a_warper_no_decoder_applies_is_an_error(model, setting):
    with pytest.raises(ConfigError, match=f"cannot apply {next(iter(setting))}"):
        generate(model, "sample", do_sample=True, **setting)


def test_sampling_settings_for_a_decoder_that_does_not_sample_are_an_error(model):
    with pytest.raises(ConfigError, match="decoder 'beam' cannot apply temperature=0.5"):
        generate(model, "beam", num_beams=2, do_sample=True, temperature=0.5)
    with pytest.raises(ConfigError, match="num_beams=3: decoder 'sample' does not search beams"):
        generate(model, "sample", num_beams=3)


def test_min_new_tokens_counts_from_the_padded_prompt_on_left_padded_rows(model):
    """Processors see transformers' own ids (left padding included), so min_new_tokens counts generated tokens
    on every row, also the shorter, padded one."""
    ids = torch.tensor([[0, 0, 5, 9], [1, 5, 9, 14]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    eos = 2
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, custom_generate=hf.generate, decoder="greedy",
                             min_new_tokens=5, max_new_tokens=6, bad_words_ids=None)
    for row in out[:, ids.shape[1]:].tolist():
        assert eos not in row[:5], row


class BoostEos:
    """A user's processor that makes EOS the most likely token wherever it is allowed."""

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[:, 2] = scores[:, 2] + 1000.0
        return scores


def test_min_new_tokens_releases_eos_at_the_same_step_on_padded_and_unpadded_rows(model):
    """With EOS boosted, each row's first EOS comes exactly when min_new_tokens allows it: counting from the
    unpadded prompt would hold EOS back two more steps on the padded row."""
    ids = torch.tensor([[0, 0, 5, 9], [1, 5, 9, 14]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, custom_generate=hf.generate, decoder="greedy",
                             min_new_tokens=5, max_new_tokens=9, logits_processor=LogitsProcessorList([BoostEos()]),
                             eos_token_id=2, pad_token_id=0)
    for row in out[:, ids.shape[1]:].tolist():
        assert row.index(2) == 5, row


class Recorder(LogitsTransform):
    """Remembers every request it starts and finishes."""

    def __init__(self):
        self.started: list[list[int]] = []
        self.finished: list[tuple[list[int], str]] = []

    def start(self, prompt_ids):
        self.started.append(list(prompt_ids))
        return len(self.started)

    def apply(self, state, generated_ids, logits):
        return logits

    def finish(self, state, generated_ids, reason):
        self.finished.append((list(generated_ids), reason))


@pytest.fixture
def recorder():
    made = Recorder()
    decoder = anydecode.algorithms.loop.transform_decoder("recorder", anydecode.DecoderConfig, lambda c, x: made)
    yield made, decoder


def test_a_reused_processor_starts_a_new_request_at_every_generate_call(model, recorder):
    """A longer second prompt used to be replayed into the first request as generated text."""
    made, decoder = recorder
    proc = hf.logits_processor(decoder, vocab_size=96, eos_token_ids=[2])
    first = torch.tensor([[1, 5, 9]])
    second = torch.tensor([[1, 5, 9, 14, 20, 21]])  # longer: the old guess took it for the same request
    with torch.no_grad():
        model.generate(first, attention_mask=torch.ones_like(first), logits_processor=LogitsProcessorList([proc]),
                       max_new_tokens=3, do_sample=False)
        model.generate(second, attention_mask=torch.ones_like(second),
                       logits_processor=LogitsProcessorList([proc]), max_new_tokens=3, do_sample=False)
    assert made.started == [[1, 5, 9], [1, 5, 9, 14, 20, 21]]
    assert len(made.finished) == 2  # each generate() call's request ended, the first when its list was freed
    assert proc.requests.keys() == []


class EndOrBan(LogitsTransform):
    """Rows whose prompt starts with 7 may only end (EOS); the others may never emit ``banned``."""

    def __init__(self, banned: int):
        self.banned = banned

    def start(self, prompt_ids):
        return int(prompt_ids[0])

    def apply(self, state, generated_ids, logits):
        out = logits.clone()
        if state == 7:
            out[:] = float("-inf")
            out[2] = 0.0
        else:
            out[self.banned] = float("-inf")
        return out


def test_a_row_that_ended_in_the_previous_call_is_constrained_in_the_next(model):
    """Issue 12: reusing a processor, rows that had finished in the previous generate() call skipped the
    transform in the next one."""
    second = torch.tensor([[1, 5, 9], [1, 5, 9]])
    with torch.no_grad():
        plain = model.generate(second, attention_mask=torch.ones_like(second), max_new_tokens=4, do_sample=False)
    banned = int(plain[0, 3])  # what the model says first without the transform
    transform = EndOrBan(banned)
    decoder = anydecode.algorithms.loop.transform_decoder("end_or_ban", anydecode.DecoderConfig,
                                                          lambda c, x: transform)
    proc = hf.logits_processor(decoder, vocab_size=96, eos_token_ids=[2])
    first = torch.tensor([[7, 5, 9], [1, 5, 9]])  # row 0 ends at once
    with torch.no_grad():
        out1 = model.generate(first, attention_mask=torch.ones_like(first),
                              logits_processor=LogitsProcessorList([proc]), max_new_tokens=4, do_sample=False,
                              eos_token_id=2, pad_token_id=0)
        out2 = model.generate(second, attention_mask=torch.ones_like(second),
                              logits_processor=LogitsProcessorList([proc]), max_new_tokens=4, do_sample=False,
                              eos_token_id=2, pad_token_id=0)
    assert int(out1[0, 3]) == 2
    for row in out2[:, 3:].tolist():
        assert banned not in row, row


def test_the_processor_is_called_by_transformers_from_a_per_call_list(model, recorder):
    """Guards the one private fact the processor relies on (transformers 5.x): generate() calls user processors from
    a LogitsProcessorList it builds for that call. If a release changes it, this fails loudly."""
    made, decoder = recorder
    proc = hf.logits_processor(decoder, vocab_size=96, eos_token_ids=[2])
    owners = []
    begin = proc._begin

    def spy(owner, input_ids):
        owners.append(owner)
        return begin(owner, input_ids)

    proc._begin = spy
    with torch.no_grad():
        for _ in range(2):
            model.generate(PROMPT, attention_mask=torch.ones_like(PROMPT),
                           logits_processor=LogitsProcessorList([proc]), max_new_tokens=3, do_sample=False)
    assert len(owners) == 2, "a request began other than once per generate() call"
    assert all(owner is not None for owner in owners), "transformers no longer calls processors from a list"


def test_predicted_outputs_draft_the_prediction_and_leave_the_output_greedy(model):
    """OpenAI's ``prediction``: the output is greedy's; a right prediction is drafted and accepted, a wrong one
    rejected, and the counts add up to what was drafted."""
    greedy = generate(model, "greedy", max_new_tokens=16)
    right = greedy[0, PROMPT.shape[1]:].tolist()
    for prediction, accepted_most in ((right, True), ([7] * 16, False)):
        for decoder in ("iad", "suffix"):
            out = generate(model, decoder, max_new_tokens=16, prediction=prediction, return_dict_in_generate=True)
            assert out.sequences.tolist() == greedy.tolist(), decoder
            stats = out.anydecode_stats
            accepted, rejected = stats["accepted_prediction_tokens"], stats["rejected_prediction_tokens"]
            assert accepted + rejected == stats["drafted"]
            if accepted_most:
                assert accepted >= 10, (decoder, stats)
            elif decoder == "iad":  # iad drafts the prediction only (suffix also drafts from the output itself)
                assert accepted <= 1, (decoder, stats)


@pytest.mark.parametrize("decoder,names", [("greedy", "decoder 'greedy'"), ("sample", "decoder 'sample'"),
                                           ("prompt_lookup", "drafter 'prompt_lookup'"),
                                           ("aded", "drafter 'aded'")])
def test_a_prediction_the_decoder_cannot_draft_from_is_refused(model, decoder, names):
    """A prediction is never silently ignored: decoders and drafters that do not draft from it refuse it."""
    with pytest.raises(ConfigError, match=f"{names} does not draft from a prediction"):
        generate(model, decoder, max_new_tokens=4, prediction=[7, 8, 9])
