"""The oracle drafter: with the target's greedy continuation recorded, greedy speculative decoding accepts every
draft token; a recording the output departs from is re-aligned (or, with realign off, no longer drafted from),
and the output stays the greedy one either way."""

from __future__ import annotations

import numpy as np
import pytest
from anydecode.algorithms.contracts.config import SamplingConfig
from anydecode.algorithms.contracts.errors import ConfigError
from anydecode.algorithms.speculative.decode import speculative_decode
from anydecode.algorithms.speculative.oracle import OracleConfig, OracleDrafter
from anydecode.conformance import ToyModel, toy_context

VOCAB, EOS = 12, 11
GREEDY = SamplingConfig(temperature=0.0)


def model(seed: int = 0, eos: int | None = None) -> ToyModel:
    return ToyModel.seeded(VOCAB, seed=seed, eos_token_id=eos, concentration=0.3)


def greedy_continuation(toy: ToyModel, prompt: list[int], max_new: int) -> list[int]:
    out: list[int] = []
    while len(out) < max_new:
        token = int(np.argmax(toy.probs(prompt + out)))
        out.append(token)
        if token == toy.eos_token_id:
            break
    return out


@pytest.mark.parametrize("cost_aware", [False, True])
@pytest.mark.parametrize("eos", [None, EOS])
def test_oracle_on_the_recorded_greedy_output_accepts_every_draft_token(cost_aware, eos):
    toy, prompt = model(3, eos), [1, 2, 3]
    recording = greedy_continuation(toy, prompt, 40)
    assert len(recording) == 40 if eos is None else recording[-1] == EOS
    drafter = OracleDrafter(OracleConfig(continuation_ids=tuple(recording)))
    result = speculative_decode(toy_context(toy, [prompt], 40), drafter, GREEDY, cost_aware=cost_aware)
    assert result.sequences == [recording]
    stats = result.stats
    assert stats["drafted"] > 0 and stats["accepted"] == stats["drafted"] and stats["acceptance_rate"] == 1.0
    if not cost_aware:  # the whole recording drafted at once: one target pass
        assert stats["forward_passes"] == 1


def test_oracle_source_gives_each_row_its_own_recording():
    toy = model(2)
    prompts = [[1, 2, 3, 4], [5, 6, 7, 8]]
    recordings = {tuple(p): greedy_continuation(toy, p, 30) for p in prompts}
    first, second = recordings[tuple(prompts[0])], recordings[tuple(prompts[1])]
    wrong = [(first[0] + 1) % EOS] * 3
    # a set of recordings for one prompt: the one the output agrees with is followed
    source = {tuple(prompts[0]): [wrong, first], tuple(prompts[1]): second}
    drafter = OracleDrafter(OracleConfig(max_draft_tokens=8), source)
    result = speculative_decode(toy_context(toy, prompts, 30), drafter, GREEDY, cost_aware=False)
    assert result.sequences == [first, second]
    assert result.stats["accepted"] == result.stats["drafted"] - 3  # only the wrong recording's first draft fails
    assert result.stats["forward_passes"] <= 2 * (30 // 9 + 1) + 1


def test_oracle_realigns_after_the_output_departs_from_the_recording():
    toy, prompt = model(3), [4, 5, 6]
    truth = greedy_continuation(toy, prompt, 40)
    assert len(truth) == 40
    # a recording from "another run": one token differs at position 10
    recording = list(truth)
    recording[10] = (recording[10] + 1) % EOS
    realigned = OracleDrafter(OracleConfig(continuation_ids=tuple(recording), max_draft_tokens=6))
    result = speculative_decode(toy_context(toy, [prompt], 40), realigned, GREEDY, cost_aware=False)
    assert result.sequences == [truth]  # lossless whatever the drafts
    stats = result.stats
    assert stats["accepted"] < stats["drafted"]
    # drafting went on after the departure: more accepted than the 10 tokens before it
    assert stats["accepted"] > 10
    stopped = OracleDrafter(OracleConfig(continuation_ids=tuple(recording), max_draft_tokens=6, realign=False))
    result = speculative_decode(toy_context(toy, [prompt], 40), stopped, GREEDY, cost_aware=False)
    assert result.sequences == [truth]
    # nothing drafted after the departure: drafts reached at most one draft beyond position 10
    assert stopped.rows[0].position is None and result.stats["drafted"] <= 10 + 6


def test_oracle_needs_a_recording():
    with pytest.raises(ConfigError, match="continuation_ids"):
        OracleDrafter(OracleConfig())
    drafter = OracleDrafter(OracleConfig(), {(1,): [2, 3]})
    drafter.start([[9]])  # a prompt without a recording: no drafts
    assert drafter.propose([[9, 2]], [4])[0].tokens == []
    assert OracleConfig.from_mapping({"continuation_ids": "1,2,3"}, from_strings=True).continuation_ids == (1, 2, 3)


def test_copy_only_drafts_the_longest_recorded_prefix_found_in_the_context():
    from anydecode.algorithms.speculative.oracle import longest_copy

    recording = [7, 8, 9, 4, 5, 6, 1, 2]
    drafter = OracleDrafter(OracleConfig(continuation_ids=tuple(recording), copy_only=True))
    prompt = [1, 7, 8, 3, 7, 8, 9, 4, 0, 5, 6, 1]
    drafter.start([prompt])
    # "7 8 9 4" occurs in the prompt, "7 8 9 4 5" does not: the longest run, not the first one found ("7 8 3")
    assert drafter.propose([prompt], [8])[0].tokens == [7, 8, 9, 4]
    # after the output took 7 8 9 4, "5 6 1" occurs (at the prompt's end), "5 6 1 2" does not
    assert drafter.propose([prompt + [7, 8, 9, 4]], [8])[0].tokens == [5, 6, 1]
    assert drafter.propose([prompt + [7, 8, 9, 4]], [2])[0].tokens == [5, 6]
    # a recorded token found nowhere in the context: nothing to copy
    other = OracleDrafter(OracleConfig(continuation_ids=(10, 7), copy_only=True))
    other.start([prompt])
    assert other.propose([prompt], [8])[0].tokens == []
    assert longest_copy([], [1]) == 0 and longest_copy([1, 2], []) == 0 and longest_copy([3, 1, 2], [1, 2, 5]) == 2


def test_copy_only_oracle_keeps_greedy_output_and_accepts_all_it_drafts():
    toy, prompt = model(5), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    recording = greedy_continuation(toy, prompt, 40)
    full = speculative_decode(toy_context(toy, [prompt], 40),
                              OracleDrafter(OracleConfig(continuation_ids=tuple(recording))), GREEDY, cost_aware=False)
    copy = speculative_decode(toy_context(toy, [prompt], 40),
                              OracleDrafter(OracleConfig(continuation_ids=tuple(recording), copy_only=True)), GREEDY,
                              cost_aware=False)
    assert copy.sequences == full.sequences == [recording]
    assert copy.stats["accepted"] == copy.stats["drafted"] < full.stats["drafted"]
    assert copy.stats["forward_passes"] > full.stats["forward_passes"]
