"""Grammar decoding on the embedded model through llama.cpp: every JSON-schema and Lark output is valid."""

import json
import re

import jsonschema
import lark
import pytest

import anydecode.plugins.llamacpp as lc
from anydecode.algorithms.grammar import forget_asap_state, state_store

pytestmark = pytest.mark.integration

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
#: outlines-core ignores minimum/maximum (and says so): bound the integer by its digits instead
OUTLINES_SCHEMA = {**SCHEMA, "properties": {**SCHEMA["properties"], "age": {"type": "integer", "maxDigits": 3}}}
LARK = r"""
start: item ("," item)? ("," item)? "."
item: " "? COLOUR
COLOUR: "red" | "green" | "blue" | "yellow"
"""


@pytest.fixture(scope="module")
def llm():
    return lc.load_default(n_threads=2)


@pytest.mark.parametrize("decoder,engine", [("gcd", "llguidance"), ("asap", "llguidance"), ("asap", "outlines")])
def test_json_schema_outputs_are_all_valid(llm, decoder, engine):
    forget_asap_state()
    schema = SCHEMA if engine == "llguidance" else OUTLINES_SCHEMA
    for seed in range(3):
        out = lc.generate(llm, "Describe a person as JSON.", decoder=decoder, grammar=json.dumps(schema),
                          engine=engine, max_new_tokens=60, seed=seed, chat=True)
        assert out.finish_reason == "stop", out.text
        jsonschema.validate(json.loads(out.text), schema)


@pytest.mark.parametrize("decoder", ["gcd", "asap"])
def test_lark_outputs_are_all_valid(llm, decoder):
    parser = lark.Lark(LARK, start="start")
    for seed in range(3):
        out = lc.generate(llm, "List some colours.", decoder=decoder, grammar=LARK, max_new_tokens=40, seed=seed,
                          chat=True, temperature=0.8)
        assert out.finish_reason == "stop", out.text
        parser.parse(out.text)


def test_logits_processor_list_is_really_applied(llm):
    prompt = "Q: Is water wet? Answer with one word.\nA:"
    free = llm.create_completion(prompt, max_tokens=12, temperature=0.0)["choices"][0]["text"]
    procs = lc.logits_processor_list(llm, "gcd", grammar=r" (yes|no)\.", grammar_format="regex")
    out = llm.create_completion(prompt, max_tokens=12, temperature=0.0, logits_processor=procs)
    text = out["choices"][0]["text"]
    assert re.fullmatch(r" (yes|no)\.", text), text
    assert procs[0].calls > 0
    assert not re.fullmatch(r" (yes|no)\.", free), "the prompt alone does not give the grammar's answer"


def test_asap_learns_across_calls_and_saves_its_state(llm, tmp_path):
    path = tmp_path / "asap.json"
    for seed in range(3):
        lc.generate(llm, "Colours?", decoder="asap", grammar=LARK, max_new_tokens=30, seed=seed,
                    asap_state=str(path))
    data = json.loads(path.read_text())
    (entry,) = data["entries"].values()
    assert len(entry["nodes"]["parent"]) > 3 and entry["nodes"]["samples"] == 3
    assert entry["nodes"]["efg"][0] < 1.0, "the root learned that some continuations leave the grammar"
    assert state_store(path).active_rows == 0
