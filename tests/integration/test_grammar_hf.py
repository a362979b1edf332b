"""Grammar decoding on the embedded model through transformers: LogitsProcessor and custom_generate."""

import json

import jsonschema
import lark
import pytest
import torch

import anydecode.plugins.hf as hf
from anydecode.algorithms.grammar import (
    AsapConfig,
    forget_asap_state,
    from_llama,
    from_transformers,
    get_engine,
    grammar_spec,
    state_store,
)
from anydecode.algorithms.grammar.transforms import AsapTransform

pytestmark = pytest.mark.integration

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 16}, "rain": {"type": "boolean"}},
    "required": ["city", "rain"],
    "additionalProperties": False,
}
LARK = 'start: NUMBER " " OP " " NUMBER\nNUMBER: /[1-9][0-9]?/\nOP: "+" | "-" | "*"'


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return hf.load_default()


def chat_ids(tok, text):
    return tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                   return_tensors="pt", return_dict=True)["input_ids"]


def texts(tok, out, prompt_len):
    return [tok.decode(row[prompt_len:], skip_special_tokens=True) for row in out]


def test_tokenizer_bridges_agree_on_every_token(model_and_tokenizer):
    import llama_cpp

    from anydecode.models import default_gguf_path

    _, tok = model_and_tokenizer
    llm = llama_cpp.Llama(model_path=str(default_gguf_path()), vocab_only=True, verbose=False)
    a, b = from_transformers(tok), from_llama(llm)
    assert a.vocab_size == b.vocab_size == 49152
    assert a.token_bytes == b.token_bytes and a.eos_token_ids == b.eos_token_ids
    assert a.fingerprint == b.fingerprint  # one compiled grammar serves both runtimes


@pytest.mark.parametrize("decoder", ["gcd", "asap"])
def test_logits_processor_with_num_return_sequences_gives_valid_json(model_and_tokenizer, decoder):
    model, tok = model_and_tokenizer
    forget_asap_state()
    ids = chat_ids(tok, "What is the weather in a city? Answer in JSON.")
    proc = hf.logits_processor(decoder, tokenizer=tok, grammar=json.dumps(SCHEMA))
    torch.manual_seed(0)
    out = model.generate(ids, logits_processor=[proc], do_sample=True, temperature=1.0, top_k=0,
                         num_return_sequences=3, max_new_tokens=40)
    for text in texts(tok, out, ids.shape[1]):
        jsonschema.validate(json.loads(text), SCHEMA)


def test_custom_generate_asap_learns_from_n_samples_in_order(model_and_tokenizer):
    model, tok = model_and_tokenizer
    forget_asap_state()
    ids = chat_ids(tok, "Write a small sum.")
    out = model.generate(ids, custom_generate=hf.generate, decoder="asap", grammar=LARK, n=3, seed=4,
                         anydecode_tokenizer=tok, max_new_tokens=12, do_sample=True)
    parser = lark.Lark(LARK)
    for text in texts(tok, out, ids.shape[1]):
        parser.parse(text)
    compiled = get_engine("llguidance").compile(grammar_spec(LARK), from_transformers(tok, 49152))
    trie = AsapTransform(compiled, AsapConfig(grammar=LARK), state_store()).trie(ids[0].tolist())
    assert trie.samples == 3 and trie.nodes > 3
