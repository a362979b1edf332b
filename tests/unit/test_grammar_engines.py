"""Grammar engines and tokenizer bridges: masks, consume, rollback, fork, completion, caching and bad grammars."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from anydecode.algorithms.contracts.errors import ConfigError, RegistryError
from anydecode.algorithms.grammar import (
    GrammarError,
    GrammarSpec,
    compile_for,
    from_llama,
    get_engine,
    grammar_file_spec,
    grammar_spec,
    infer_format,
    toy_vocabulary,
    vocabulary_for,
)
from anydecode.algorithms.grammar.decoders import AsapConfig, GrammarConfig
from anydecode.algorithms.grammar.exact import language_strings, tokenizations
from anydecode.algorithms.contracts.decoder import TransformContext

BINARY = toy_vocabulary(["0", "1", None])
ABC = toy_vocabulary(["a", "b", "c", "ab", "bc", None])
ENGINES = ["llguidance", "outlines"]
SKEWED_REGEX = "00000|1[01]{4}"
SKEWED_LARK = 'start: "00000" | "1" /[01]{4}/'


def allowed(matcher) -> list[int]:
    return np.nonzero(matcher.allowed_array())[0].tolist()


@pytest.mark.parametrize("engine", ENGINES)
def test_matcher_walks_the_skewed_binary_language(engine):
    compiled = get_engine(engine).compile(grammar_spec(SKEWED_REGEX, "regex"), BINARY)
    m = compiled.matcher()
    assert allowed(m) == [0, 1]
    for _ in range(4):
        assert m.consume(0)
        assert allowed(m) == [0] and not m.is_complete()
    assert not m.consume(1), "a forbidden token is refused"
    assert m.consume(0) and m.is_complete() and allowed(m) == [2]
    assert not m.consume(0)
    assert m.consume(2) and m.finished and allowed(m) == []


@pytest.mark.parametrize("engine", ENGINES)
def test_rollback_and_fork_restore_states(engine):
    compiled = get_engine(engine).compile(grammar_spec(SKEWED_REGEX, "regex"), BINARY)
    m = compiled.matcher()
    for t in (1, 0, 1, 1, 0, 2):
        assert m.consume(t)
    twin = m.fork()
    m.rollback(6)
    assert allowed(m) == [0, 1] and m.history == []
    assert twin.finished and twin.history == [1, 0, 1, 1, 0, 2]
    twin.rollback(2)
    assert allowed(twin) == [0, 1] and not twin.is_complete()
    with pytest.raises(ConfigError):
        twin.rollback(9)


@given(st.lists(st.sampled_from("abc"), min_size=1, max_size=3).map("".join), st.data())
@settings(max_examples=25, deadline=None)
def test_engines_agree_on_masks_along_random_walks(word, data):
    """Same regex, same vocabulary: llguidance and outlines allow the same tokens at every step, except that
    llguidance writes text the grammar forces with its canonical tokenization only."""
    regex = f"({word}|a(b|c)?)c?"
    spec = grammar_spec(regex, "regex")
    ml, mo = (get_engine(e).compile(spec, ABC).matcher() for e in ENGINES)
    for _ in range(6):
        a, b = allowed(ml), allowed(mo)
        forced = ml.inner.compute_ff_bytes()
        if forced:
            assert a and set(a) <= set(b)
        else:
            assert a == b
        if not a:
            break
        token = data.draw(st.sampled_from(a))
        assert ml.consume(token) and mo.consume(token)


@given(st.lists(st.sampled_from(["a", "b", "c", "ab", "bc"]), min_size=1, max_size=4), st.data())
@settings(max_examples=25, deadline=None)
def test_every_complete_walk_is_in_the_language(parts, data):
    regex = "|".join(sorted(set(parts))) + "|(a|b)c"
    strings = set(language_strings(regex))
    for engine in ENGINES:
        m = get_engine(engine).compile(grammar_spec(regex, "regex"), ABC).matcher()
        text = b""
        while True:
            choices = allowed(m)
            assert choices, "a finite language never dead-ends with this vocabulary"
            token = data.draw(st.sampled_from(choices))
            assert m.consume(token)
            if token == 5:
                break
            text += ABC.token_bytes[token]
        assert text.decode() in strings


def test_tokenizations_cover_every_way_to_write_a_string():
    assert tokenizations(["abc"], ABC) == sorted([(0, 1, 2, 5), (3, 2, 5), (0, 4, 5)])


def test_compiled_grammars_are_cached_per_grammar_and_vocabulary():
    engine = get_engine("llguidance")
    spec = grammar_spec(SKEWED_LARK)
    assert engine.compile(spec, BINARY) is engine.compile(grammar_spec(SKEWED_LARK), BINARY)
    other = toy_vocabulary(["0", "1", None])
    assert other.fingerprint == BINARY.fingerprint  # same bytes: same compiled grammar
    wider = toy_vocabulary(["0", "1", "00", None])
    assert engine.compile(spec, wider) is not engine.compile(spec, BINARY)


def test_format_inference_and_files(tmp_path):
    assert infer_format('{"type": "object"}') == "json_schema"
    assert infer_format('root ::= "a"') == "gbnf"
    assert infer_format('start: "a"') == "lark"
    path = tmp_path / "g.regex"
    path.write_text("a+")
    assert grammar_file_spec(str(path)) == GrammarSpec("a+", "regex")
    unknown = tmp_path / "g.txt"
    unknown.write_text("a")
    with pytest.raises(ConfigError, match="extension '.txt'"):
        grammar_file_spec(str(unknown))


def test_a_grammar_string_is_never_read_as_a_file(tmp_path):
    """Grammar settings may come from a server's clients: text that names a file stays text (it parses as a
    Lark grammar, or fails to), and the file is not opened."""
    secret = tmp_path / "secret.regex"
    secret.write_text("TOPSECRET")
    spec = grammar_spec(str(secret))
    assert spec.text == str(secret) and "TOPSECRET" not in spec.text


# -- bad input -----------------------------------------------------------------------------------------------------

PARSE_ERRORS = [
    ("llguidance", "lark", 'start: "a"\n  | "b" c\n', 2, 9),
    ("llguidance", "lark", 'start "a"', 1, 7),
    ("llguidance", "gbnf", 'root ::= "a"\nother ::= ( "b"', 2, 16),
    ("llguidance", "gbnf", 'root ::= "a" missing', 1, 14),
    ("llguidance", "regex", "ab(c", 1, 3),
    ("outlines", "regex", "ab(c", 1, 3),
    ("llguidance", "json_schema", '{"type": "object",\n  "properties" {}}', 2, 16),
    ("outlines", "json_schema", '{"type": "object",\n  "properties" {}}', 2, 16),
]


@pytest.mark.parametrize("engine,fmt,text,line,column", PARSE_ERRORS)
def test_grammar_that_does_not_parse_names_line_and_column(engine, fmt, text, line, column):
    with pytest.raises(GrammarError) as info:
        get_engine(engine).compile(grammar_spec(text, fmt), ABC)
    assert (info.value.line, info.value.column) == (line, column)
    assert f"line {line}, column {column}" in str(info.value)


@pytest.mark.parametrize("engine,fmt,text", [
    ("llguidance", "lark", 'start: "x" | "yz"'),
    ("llguidance", "lark", "start: A\nA: /a+/ & /b+/"),
    ("outlines", "regex", "xyz"),
    ("outlines", "regex", "a[^\\x00-\\U0010FFFF]"),
])
def test_empty_language_is_an_error_before_generation(engine, fmt, text):
    with pytest.raises(GrammarError, match="empty language"):
        get_engine(engine).compile(grammar_spec(text, fmt), ABC)


@pytest.mark.parametrize("engine,schema", [
    ("llguidance", '{"type": "strin"}'),
    ("outlines", '{"type": "strin"}'),
    ("llguidance", '{"anyOf": []}'),
    ("outlines", '{"type": "object", "properties": {"minimum": {"type": "integer", "maximum": 9}}}'),
])
def test_unsupported_json_schema_is_a_clear_error(engine, schema):
    with pytest.raises(GrammarError, match="JSON schema not supported"):
        get_engine(engine).compile(grammar_spec(schema, "json_schema"), ABC)


def test_unknown_format_engine_and_unsupported_format():
    with pytest.raises(ConfigError, match="unknown grammar format 'yaml'"):
        grammar_spec("a", "yaml")
    with pytest.raises(ConfigError, match="grammar_format='yaml' is not one of"):
        GrammarConfig.from_mapping({"grammar": "a", "grammar_format": "yaml"})
    ctx = TransformContext(vocab_size=6, tokenizer=ABC)
    with pytest.raises(ConfigError, match="needs grammar="):
        compile_for(AsapConfig.from_mapping({}), ctx)
    with pytest.raises(RegistryError, match="unknown grammar engine 'xgrammar'"):
        compile_for(GrammarConfig(grammar="a", engine="xgrammar"), ctx)
    with pytest.raises(GrammarError, match="does not support the lark format"):
        compile_for(GrammarConfig(grammar='start: "a"', engine="outlines"), ctx)
    with pytest.raises(ConfigError, match="needs the tokenizer"):
        compile_for(GrammarConfig(grammar="a", grammar_format="regex"), TransformContext(vocab_size=6))


# -- tokenizer bridges ---------------------------------------------------------------------------------------------

class _ByteLevelTokenizer:
    """Duck-typed like a transformers byte-level BPE tokenizer."""

    class backend_tokenizer:  # noqa: N801 - mirrors the transformers attribute
        decoder = "ByteLevel(add_prefix_space=True)"

    pieces = ["<|endoftext|>", "a", "Ġb", "Ċ", "ab", "Ã©"]
    all_special_ids = [0]
    eos_token_id = 0
    added_tokens_decoder: dict = {}
    name_or_path = "toy-bpe"

    def __len__(self):
        return len(self.pieces)

    def convert_ids_to_tokens(self, ids):
        return [self.pieces[i] for i in ids]

    def encode(self, text, add_special_tokens=False):
        return [1] * len(text)


class _Llama:
    """Duck-typed like llama_cpp.Llama."""

    pieces = [b"<s>", b"</s>", b"a", b" b", b"\xc3"]

    class _model:  # noqa: N801
        @staticmethod
        def token_get_attr(i):
            return 8 if i < 2 else 4

    def n_vocab(self):
        return len(self.pieces)

    def detokenize(self, ids, special=False):
        return b"".join(self.pieces[i] for i in ids)

    def token_eos(self):
        return 1

    def tokenize(self, data, add_bos=False, special=False):
        return [2] * len(data)


def test_transformers_bridge_decodes_byte_level_pieces_and_pads_to_the_model_vocabulary():
    from anydecode.plugins.hf.tokenizer import HFTokenizer

    vocab = vocabulary_for(HFTokenizer(_ByteLevelTokenizer(), 8), vocab_size=8, eos_token_ids=[3])
    assert vocab.token_bytes[1:] == (b"a", b" b", b"\n", b"ab", "é".encode(), b"", b"")
    assert vocab.token_bytes[0].startswith(b"\xff")
    assert vocab.eos_token_ids == {0, 3} and vocab.vocab_size == 8
    with pytest.raises(ConfigError, match="logits have 4"):
        vocabulary_for(HFTokenizer(_ByteLevelTokenizer()), vocab_size=4)


def test_llama_bridge_marks_control_tokens():
    vocab = from_llama(_Llama())
    assert vocab.eos_token_ids == {1} and vocab.special_ids == {0, 1}
    assert vocab.token_bytes[2:] == (b"a", b" b", b"\xc3")
    m = get_engine("llguidance").compile(grammar_spec("a b", "regex"), vocab).matcher()
    assert allowed(m) == [2]


def test_unknown_tokenizer_object_is_a_clear_error():
    """The core knows no runtime: a raw tokenizer object needs its adapter's view."""
    with pytest.raises(ConfigError, match="cannot read the vocabulary of a object: grammar decoding needs the runtime "
                                          "adapter's tokenizer view"):
        vocabulary_for(object())
    with pytest.raises(ConfigError, match="cannot read the vocabulary of a _ByteLevelTokenizer"):
        vocabulary_for(_ByteLevelTokenizer())


def test_bitmask_unpacking_matches_torch_reference():
    from anydecode.algorithms.grammar.engine import unpack_bitmask

    rng = np.random.default_rng(0)
    words = rng.integers(-2**31, 2**31, size=7, dtype=np.int64).astype(np.int32)
    ref = ((torch.from_numpy(words).unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1).flatten().bool()
    assert torch.equal(torch.from_numpy(unpack_bitmask(words, 200).copy()), ref[:200])


@pytest.mark.parametrize("text,fmt", [
    ('root ::= "00000" | "1" [01] [01] [01] [01]', "gbnf"),
    (SKEWED_LARK, "lark"),
    ('{"enum": ["00000", "10110"]}', "json_schema"),
])
def test_every_format_compiles_and_accepts_its_sentences(text, fmt):
    if fmt == "json_schema":
        vocab, sentence = toy_vocabulary(['"', "0", "1", None]), [0, 2, 1, 2, 2, 1, 0]  # "10110" with quotes
    else:
        vocab, sentence = BINARY, [0, 0, 0, 0, 0]
    m = get_engine("llguidance").compile(grammar_spec(text, fmt), vocab).matcher()
    for token in sentence:
        assert not m.is_complete()
        assert m.consume(token)
    assert m.is_complete()
