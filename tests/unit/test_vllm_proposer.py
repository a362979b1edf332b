"""The vLLM proposers' runtime-free half on hand-built batches laid out as vLLM lays them out (no vLLM needed):
``token_ids_cpu`` rows of prompt + output, ``num_tokens_no_spec``, and the tokens each step accepted."""

import numpy as np
import pytest

from anydecode.algorithms.contracts.errors import ConfigError, RegistryError
from anydecode.plugins.vllm.drafts import RequestDrafters, drafter_factory, split_settings

MAX_LEN = 64


class Batch:
    """vLLM's persistent batch as the proposer sees it, with greedy verification against known target outputs."""

    def __init__(self, rows: int = 4):
        self.token_ids = np.zeros((rows, MAX_LEN), dtype=np.int32)
        self.num_tokens = np.zeros(rows, dtype=np.int32)
        self.requests: list[dict | None] = [None] * rows

    def add(self, row: int, prompt: list[int], target: list[int]) -> None:
        """A request after prefill: the prompt and the first target token."""
        self.token_ids[row, : len(prompt) + 1] = prompt + target[:1]
        self.num_tokens[row] = len(prompt) + 1
        self.requests[row] = {"target": target, "done": 1, "sampled": target[:1]}

    def move(self, src: int, dst: int) -> None:
        """vLLM condenses the batch: the request in ``src`` moves to the hole at ``dst``."""
        self.token_ids[dst] = self.token_ids[src]
        self.num_tokens[dst] = self.num_tokens[src]
        self.requests[dst], self.requests[src] = self.requests[src], None
        self.num_tokens[src] = 0

    def sampled(self) -> list[list[int]]:
        return [r["sampled"] if r else [] for r in self.requests]

    def verify(self, drafts: list[list[int]]) -> None:
        """Greedy verification: keep draft tokens while they equal the target's, then one target token."""
        for row, (req, draft) in enumerate(zip(self.requests, drafts)):
            if req is None:
                continue
            target, done = req["target"], req["done"]
            accepted = 0
            while (accepted < len(draft) and done + accepted < len(target)
                   and draft[accepted] == target[done + accepted]):
                accepted += 1
            new = target[done: done + accepted + 1]
            n = int(self.num_tokens[row])
            self.token_ids[row, n: n + len(new)] = new
            self.num_tokens[row] = n + len(new)
            req["done"] += len(new)
            req["sampled"] = new


def drafters(name: str, k: int = 4, **settings) -> RequestDrafters:
    make, config = drafter_factory(name, settings)
    return RequestDrafters(make, k, MAX_LEN, tree_budget=getattr(config, "max_nodes", None))


INSTRUCTION = [90, 91, 92]
SOURCE = [10, 11, 12, 13, 14, 15, 16, 17, 18, 19]


def test_iad_copies_the_source_after_aligning_on_the_first_output_token():
    rows = drafters("iad", k=4)
    batch = Batch(1)
    batch.add(0, INSTRUCTION + SOURCE, SOURCE)
    drafts = rows.propose(batch.sampled(), batch.num_tokens, batch.token_ids)
    assert drafts == [[11, 12, 13, 14]]  # the output's first token (10) points at the source's position 1
    batch.verify(drafts)
    assert batch.sampled() == [[11, 12, 13, 14, 15]]  # four accepted and the bonus token
    assert rows.propose(batch.sampled(), batch.num_tokens, batch.token_ids) == [[16, 17, 18, 19]]
    assert rows.stats.new_requests == 1 and rows.stats.tracked_rows == 1 and rows.stats.accepted_tokens == 4


def test_a_request_keeps_its_drafter_when_the_batch_is_condensed():
    rows = drafters("iad", k=3)
    batch = Batch(2)
    edited = SOURCE[:4] + [77] + SOURCE[5:]  # one edit: IAD loses the alignment there and finds it again
    batch.add(0, INSTRUCTION + [50, 51, 52, 53], [50, 51, 52, 53, 2])
    batch.add(1, INSTRUCTION + SOURCE, edited)
    batch.verify(rows.propose(batch.sampled(), batch.num_tokens, batch.token_ids))
    batch.requests[0] = None  # the first request finished; vLLM moves the second into row 0
    batch.move(1, 0)
    out = []
    while batch.requests[0]["done"] < len(edited):
        drafts = rows.propose(batch.sampled(), batch.num_tokens, batch.token_ids)
        out.append(drafts[0])
        batch.verify(drafts)
    assert int(batch.num_tokens[0]) == len(INSTRUCTION + SOURCE) + len(edited)
    assert list(batch.token_ids[0, len(INSTRUCTION + SOURCE): int(batch.num_tokens[0])]) == edited
    assert rows.stats.new_requests == 2  # the moved request was recognised, not restarted
    assert rows.stats.tracked_rows == len(out)
    rows.propose(batch.sampled(), batch.num_tokens, batch.token_ids)  # feedback of the last draft
    # 11 12 13 accepted, 77 from the target (no draft: 77 is not in the source), 15 re-aligns: 16 17 18 accepted
    assert out == [[], [16, 17, 18]] and rows.stats.accepted_tokens == 6


def test_identical_requests_share_a_key_and_both_get_drafts():
    rows = drafters("iad", k=2)
    batch = Batch(2)
    for row in (0, 1):
        batch.add(row, INSTRUCTION + SOURCE, SOURCE)
    first = rows.propose(batch.sampled(), batch.num_tokens, batch.token_ids)
    assert first == [[11, 12], [11, 12]]
    batch.verify(first)
    assert rows.propose(batch.sampled(), batch.num_tokens, batch.token_ids) == [[14, 15], [14, 15]]
    assert rows.stats.new_requests == 2 and rows.stats.tracked_rows == 2


def test_prefill_chunks_and_the_end_of_the_context_get_no_draft():
    rows = drafters("prompt_lookup", k=8, num_draft_tokens=8, max_ngram=2)
    batch = Batch(2)
    prompt = [5, 6, 7, 8, 5, 6, 7, 8] * 3 + [5]
    batch.add(0, prompt, [6, 7, 8])
    batch.token_ids[1, :10] = 3  # a request still in prefill: nothing sampled yet
    batch.num_tokens[1] = 10
    drafts = rows.propose(batch.sampled(), batch.num_tokens, batch.token_ids)
    assert drafts[0] == [7, 8, 5, 6, 7, 8, 5, 6] and drafts[1] == []
    short = RequestDrafters(drafter_factory("prompt_lookup", {})[0], 8, len(prompt) + 3)
    assert short.propose(batch.sampled(), batch.num_tokens, batch.token_ids)[0] == [7, 8]  # room for 2 more


def test_aded_tree_becomes_a_chain_of_at_most_k_tokens():
    rows = drafters("aded", k=3, max_nodes=12, branching=2)
    batch = Batch(1)
    text = [1, 2, 3, 4, 1, 2, 3, 5, 1, 2, 3, 4, 1, 2]
    batch.add(0, text, [3, 4, 1, 2, 3, 4])
    drafts = rows.propose(batch.sampled(), batch.num_tokens, batch.token_ids)
    assert len(drafts[0]) == 3 and drafts[0][0] == 4  # after "2 3" the table says 4 (seen twice) before 5 (once)
    batch.verify(drafts)
    assert rows.stats.accepted_tokens == 0  # learnt at the next step
    rows.propose(batch.sampled(), batch.num_tokens, batch.token_ids)
    assert rows.stats.accepted_tokens == 3


def test_switching_the_drafter_off_proposes_nothing():
    rows = drafters("iad", k=4)
    batch = Batch(1)
    batch.add(0, INSTRUCTION + SOURCE, SOURCE)
    rows.set_drafter(None)
    assert rows.propose(batch.sampled(), batch.num_tokens, batch.token_ids) == [[]]


@pytest.mark.parametrize("call,error,message", [
    (lambda: drafters("iad", k=0), ConfigError, "num_speculative_tokens=0 must be an integer >= 1"),
    (lambda: drafter_factory("iadd"), RegistryError, "unknown drafter 'iadd' (did you mean 'iad'?)"),
    (lambda: drafter_factory("draft_model"), ConfigError, "cannot run as a vLLM proposer"),
    (lambda: drafter_factory("iad", {"max_match_gram": 2}), ConfigError, "unknown setting 'max_match_gram'"),
    (lambda: drafter_factory("aded", {"max_nodes": "0"}), ConfigError, "max_nodes"),
    (lambda: drafter_factory("iad", {"source": "a b"}), ConfigError, "needs the model's tokenizer"),
    (lambda: split_settings({"decoder": "aded"}, "iad"), ConfigError, "names drafter 'aded'"),
    (lambda: split_settings({"max_ngram": 2}), ConfigError, "needs a drafter name"),
    (lambda: split_settings(["iad"]), ConfigError, "must be an object"),
])
def test_bad_settings_fail_with_the_value_and_what_is_accepted(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value)


def test_settings_sections_as_anydecode_serve_writes_them():
    assert split_settings({"decoder": "iad", "max_match_ngram": "2"}, "iad") == ("iad", {"max_match_ngram": "2"})
    assert split_settings({"decoder": "speculative", "drafter": "aded"}) == ("aded", {})
    assert split_settings({}, "prompt_lookup") == ("prompt_lookup", {})
