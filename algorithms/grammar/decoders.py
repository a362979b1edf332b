"""The ``gcd`` and ``asap`` decoders: configs and the transforms they build for a model's tokenizer."""

from __future__ import annotations

import dataclasses

from ..contracts.config import SamplingConfig, config_field
from ..contracts.decoder import Decoder, TransformContext
from ..contracts.errors import ConfigError
from ..contracts.transform import LogitsTransform
from .asap_state import state_store
from .engine import CompiledGrammar, get_engine
from .spec import FORMATS, grammar_spec
from .tokenizers import vocabulary_for
from .transforms import AsapTransform, GrammarConstrainedTransform


@dataclasses.dataclass(frozen=True)
class GrammarConfig(SamplingConfig):
    """A grammar plus the sampling settings applied after it."""

    grammar: str = config_field("", help="grammar text, or a file path (.lark, .gbnf, .json, .regex)")
    grammar_format: str | None = config_field(
        None, choices=FORMATS, help="lark, gbnf, json_schema or regex; default: from the file extension or the text")
    engine: str = config_field("llguidance", help="grammar engine: llguidance (all formats) or outlines (regex, "
                               "json_schema)")



@dataclasses.dataclass(frozen=True)
class AsapConfig(GrammarConfig):
    """ASAp's settings: the grammar, where its learned state lives, and its memory cap."""

    asap_state: str | None = config_field(
        None, help="file to load ASAp's learned state from and save it to (default: this process only)")
    asap_max_nodes: int = config_field(1_000_000, ge=1, help="most trie nodes kept per prompt and grammar; "
                                       "least recently used subtrees are evicted (soundly)")


def compile_for(config: GrammarConfig, context: TransformContext) -> CompiledGrammar:
    """Compile the config's grammar for the context's tokenizer (cached per grammar and vocabulary)."""
    if not config.grammar.strip():
        raise ConfigError("grammar decoding needs grammar=TEXT or grammar=PATH (a .lark, .gbnf, .json or .regex file)")
    spec = grammar_spec(config.grammar, config.grammar_format)
    vocab = vocabulary_for(context.tokenizer, context.vocab_size or None, context.eos_token_ids)
    return get_engine(config.engine).compile(spec, vocab)


def make_gcd(config: GrammarConfig, context: TransformContext) -> LogitsTransform:
    return GrammarConstrainedTransform(compile_for(config, context), config)


def make_asap(config: AsapConfig, context: TransformContext) -> LogitsTransform:
    compiled = compile_for(config, context)
    return AsapTransform(compiled, config, state_store(config.asap_state), config.asap_max_nodes)


GCD = Decoder(
    name="gcd",
    config_cls=GrammarConfig,
    kind="transform",
    description="grammar-constrained decoding: mask the tokens a grammar forbids (Lark, GBNF, JSON schema, regex)",
    make_transform=make_gcd,
)

ASAP = Decoder(
    name="asap",
    config_cls=AsapConfig,
    kind="transform",
    description="grammar-aligned sampling (ASAp, Park et al. 2024): learns to sample P(w | w in grammar) over calls",
    make_transform=make_asap,
)
