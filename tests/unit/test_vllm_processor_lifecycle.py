"""The vLLM logits processor's request lifecycle on both runner interfaces, without an engine.

V1 is driven with vLLM's own ``BatchUpdate`` objects. Model Runner V2 is driven with vLLM's own ``LogitsContext``;
its ``LogitsProcRequestState`` cannot be built on a CPU (its ``UvaBackedTensor`` buffers are pinned memory with an
accelerator view: ``vllm/v1/worker/gpu/buffer_utils.py``), so a stand-in with the same three fields
(``prompt_len.np``, ``total_len.gpu``, ``all_token_ids.gpu``) plays it here; a test checks the release's class still
has them. The V2 runner itself runs only on a GPU, which these sessions were not lent: it is not exercised here.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

vllm = pytest.importorskip("vllm")

from vllm import SamplingParams  # noqa: E402
from vllm.v1.sample.logits_processor import BatchUpdate  # noqa: E402
from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsContext  # noqa: E402

from anydecode.algorithms.grammar import forget_asap_state, state_store  # noqa: E402
from anydecode.plugins.vllm.processor import AnydecodeLogitsProcessor  # noqa: E402

VOCAB = 49152
EOS = 2
YES_NO = {"decoder": "gcd", "grammar": "( yes| no)", "grammar_format": "regex"}


@pytest.fixture(scope="module")
def folder():
    from anydecode.models import ensure_hf_copy

    return str(ensure_hf_copy())


def config(folder, section=None):
    model = types.SimpleNamespace(get_vocab_size=lambda: VOCAB, tokenizer=folder, model=folder, max_model_len=64)
    return types.SimpleNamespace(model_config=model, additional_config={"anydecode": section or {}})


class RequestStates:
    """Stands for vLLM V2's LogitsProcRequestState: per-slot prompt length, total length and token ids."""

    def __init__(self, slots=4, width=64):
        self.prompt_len = types.SimpleNamespace(np=np.zeros(slots, dtype=np.int32))
        self.total_len = types.SimpleNamespace(gpu=torch.zeros(slots, dtype=torch.int32))
        self.all_token_ids = types.SimpleNamespace(gpu=torch.zeros(slots, width, dtype=torch.int32))

    def put(self, slot, prompt, output=()):
        ids = list(prompt) + list(output)
        self.prompt_len.np[slot] = len(prompt)
        self.total_len.gpu[slot] = len(ids)
        self.all_token_ids.gpu[slot, : len(ids)] = torch.tensor(ids, dtype=torch.int32)


def context(slots):
    index = torch.tensor(slots, dtype=torch.int32)
    return LogitsContext(expanded_idx_mapping=index, idx_mapping=index, idx_mapping_np=index.numpy(),
                         expanded_local_pos=torch.zeros_like(index), input_ids=torch.zeros_like(index),
                         pos=torch.zeros_like(index), seq_lens_upper_bound_np=index.numpy())


def params(**xargs):
    return SamplingParams(max_tokens=6, extra_args=dict(xargs))


def test_v2_starts_each_request_once_with_its_real_prompt_and_ends_it_by_its_tokens(folder):
    states = RequestStates()
    proc = AnydecodeLogitsProcessor(config(folder), states)
    assert proc.add_request(0, params(**YES_NO)) and not proc.add_request(1, params())
    assert len(proc.requests) == 0  # no request began with an empty prompt
    states.put(0, [5, 6, 7])
    logits = torch.zeros(2, VOCAB)
    out = proc.apply(logits.clone(), context([0, 1]))
    assert len(proc.requests) == 1 and int(torch.isfinite(out[0]).sum()) >= 1
    assert bool(torch.isfinite(out[1]).all())  # the request that did not ask for anydecode is untouched
    allowed = int(torch.isfinite(out[0]).nonzero()[0])
    states.put(0, [5, 6, 7], [allowed, EOS])  # vLLM committed EOS and dropped the request (no apply for it)
    assert proc.add_request(0, params(**YES_NO))  # the slot is reused: the old request ends as it ended, by EOS
    assert proc.requests.counts["stop"] == 1 and proc.requests.counts["abort"] == 0


def test_v2_a_finished_request_ends_at_the_next_step_without_waiting_for_its_slot(folder):
    """V2 tells a processor nothing when a request ends. A request that finished (EOS, or max_tokens) is ended at
    the next step it is absent from, with the reason its tokens give; one absent without finishing stays."""
    states = RequestStates()
    proc = AnydecodeLogitsProcessor(config(folder), states)
    for slot in (0, 1, 2):
        assert proc.add_request(slot, params(**YES_NO))
        states.put(slot, [5, 6, 7])
    out = proc.apply(torch.zeros(3, VOCAB), context([0, 1, 2]))
    allowed = int(torch.isfinite(out[0]).nonzero()[0])
    assert len(proc.requests) == 3
    states.put(0, [5, 6, 7], [allowed, EOS])  # slot 0 ended with EOS; slot 2 is preempted, not finished
    states.put(1, [5, 6, 7], [allowed])
    proc.apply(torch.zeros(1, VOCAB), context([1]))
    assert proc.requests.counts["stop"] == 1 and proc.requests.counts["abort"] == 0
    assert len(proc.requests) == 2 and 0 not in proc.slots and 2 in proc.slots


def test_v2_dead_end_ends_the_request_with_eos_and_a_stat(folder):
    states = RequestStates()
    proc = AnydecodeLogitsProcessor(config(folder), states)
    proc.add_request(0, params(**YES_NO))
    states.put(0, [5, 6, 7], [11])  # a token outside the grammar: the row is at a dead end
    out = proc.apply(torch.zeros(1, VOCAB), context([0]))
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == [EOS]
    states.put(0, [5, 6, 7], [11, EOS])
    proc.apply(torch.zeros(1, VOCAB), context([0]))
    proc.add_request(0, params())
    assert proc.requests.counts["error"] + proc.requests.counts["dead_end"] == 1


def test_v1_asap_rows_return_to_zero_and_a_file_backed_state_is_saved(folder, tmp_path):
    forget_asap_state()
    path = tmp_path / "asap.json"
    section = {"serving": {"trust_extra_args": True}}
    proc = AnydecodeLogitsProcessor(config(folder, section), "cpu", False)
    xargs = {**YES_NO, "decoder": "asap", "asap_state": str(path)}
    outputs = [[], []]
    proc.update_state(BatchUpdate(batch_size=2, removed=[], moved=[],
                                  added=[(0, params(**xargs), [5, 6], outputs[0]),
                                         (1, params(**xargs), [5, 7], outputs[1])]))
    proc.apply(torch.zeros(2, VOCAB))
    store = state_store(str(path))
    assert store.active_rows == 2
    outputs[0] += [EOS]
    outputs[1] += [EOS]
    proc.update_state(BatchUpdate(batch_size=2, removed=[0, 1], moved=[], added=[]))
    assert store.active_rows == 0 and path.exists()
    assert proc.requests.counts["stop"] == 2 and len(proc.requests) == 0


def test_the_stand_in_has_the_fields_vllm_v2_gives_a_processor():
    """vLLM's own ``LogitsProcRequestState`` cannot be built on a CPU (its buffers need pinned memory, which needs
    an accelerator), so the tests above use ``RequestStates``. This fails loudly if the release's class no longer
    has the fields and views the processor reads: ``prompt_len.np``, ``total_len.gpu``, ``all_token_ids.gpu``."""
    import dataclasses
    import inspect

    from vllm.v1.worker.gpu import buffer_utils
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcRequestState

    fields = {f.name: f.type for f in dataclasses.fields(LogitsProcRequestState)}
    assert {"prompt_len", "total_len", "all_token_ids"} <= fields.keys()
    assert "UvaBackedTensor" in str(fields["prompt_len"])
    assert "StagedWriteTensor" in str(fields["total_len"]) and "StagedWriteTensor" in str(fields["all_token_ids"])
    uva = inspect.getsource(buffer_utils.UvaBackedTensor)
    staged = inspect.getsource(buffer_utils.StagedWriteTensor)
    assert "self.np" in uva and "self.gpu" in staged


def test_v2_asap_rows_return_to_zero_and_a_file_backed_state_is_saved(folder, tmp_path):
    """Issue 12 on V2: a request used to be started twice (empty prompt, then the real one), so ASAp's count of
    live rows never returned to 0 and a file-backed state was never saved."""
    forget_asap_state()
    path = tmp_path / "asap.json"
    section = {"serving": {"trust_extra_args": True}}
    states = RequestStates()
    proc = AnydecodeLogitsProcessor(config(folder, section), states)
    xargs = {**YES_NO, "decoder": "asap", "asap_state": str(path)}
    for slot, prompt in ((0, [5, 6]), (1, [5, 7])):
        assert proc.add_request(slot, params(**xargs))
        states.put(slot, prompt)
    store = state_store(str(path))
    out = proc.apply(torch.zeros(2, VOCAB), context([0, 1]))
    assert store.active_rows == 2
    allowed = [int(torch.isfinite(out[r]).nonzero()[0]) for r in (0, 1)]
    states.put(0, [5, 6], [allowed[0], EOS])
    states.put(1, [5, 7], [allowed[1], EOS])
    proc.add_request(2, params())  # another request's step: both anydecode requests have left the batch
    states.put(2, [9])
    proc.apply(torch.zeros(1, VOCAB), context([2]))
    assert store.active_rows == 0 and path.exists()
    assert proc.requests.counts["stop"] == 2


def _v2_ignore_eos(folder):
    states = RequestStates()
    proc = AnydecodeLogitsProcessor(config(folder), states)
    ignoring = SamplingParams(max_tokens=6, ignore_eos=True, extra_args=dict(YES_NO))
    assert proc.add_request(0, ignoring) and proc.add_request(1, params(**YES_NO))
    states.put(0, [5, 6, 7])
    states.put(1, [5, 6, 7])
    out = proc.apply(torch.zeros(2, VOCAB), context([0, 1]))
    allowed = int(torch.isfinite(out[0]).nonzero()[0])
    states.put(0, [5, 6, 7], [allowed, EOS])
    proc.apply(torch.zeros(1, VOCAB), context([1]))
    return proc


def test_v2_a_request_that_ignores_eos_is_not_ended_by_an_eos(folder):
    """``ignore_eos``: an EOS in the tokens is no sign the request ended. Absent from a step (another pipeline
    stage's batch, a full token budget), it keeps its transform and is constrained when it comes back."""
    proc = _v2_ignore_eos(folder)
    assert 0 in proc.slots and proc.requests.counts["stop"] == 0
    out = proc.apply(torch.zeros(2, VOCAB), context([0, 1]))  # back in the batch: still constrained
    assert int(torch.isfinite(out[0]).sum()) < VOCAB
