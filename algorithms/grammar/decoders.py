"""The ``gcd`` and ``asap`` decoders: configs and the transforms they build for a model's tokenizer."""

from __future__ import annotations

import dataclasses

from ..contracts.config import SamplingConfig, config_field
from ..contracts.decoder import TransformContext
from ..contracts.errors import ConfigError
from ..contracts.transform import LogitsTransform
from ..loop import transform_decoder
from .asap_state import AsapStateStore, state_store, tenant_store
from .engine import CompiledGrammar
from .engines import engine_spec, get_engine
from .spec import FORMATS, grammar_file_spec, grammar_spec
from .tokenizers import vocabulary_for
from .transforms import AsapTransform, GrammarConstrainedTransform


@dataclasses.dataclass(frozen=True)
class GrammarConfig(SamplingConfig):
    """A grammar plus the sampling settings applied after it."""

    grammar: str = config_field("", request=True, help="grammar text (lark, gbnf, JSON schema or regex)")
    grammar_file: str | None = config_field(
        None, help="read the grammar from this file instead (.lark, .gbnf, .json, .regex); operator setting")
    grammar_format: str | None = config_field(
        None, choices=FORMATS, request=True, help="lark, gbnf, json_schema or regex; default: from the file extension or the text")
    engine: str = config_field("llguidance", help="grammar engine: llguidance (all formats) or outlines (regex, "
                               "json_schema)")

    def resolve(self) -> None:
        engine_spec(self.engine, self.components)  # an unknown engine fails here, naming the registered ones



@dataclasses.dataclass(frozen=True)
class AsapConfig(GrammarConfig):
    """ASAp's settings: the grammar, where its learned state lives, and its memory cap."""

    asap_state: str | None = config_field(
        None, help="file to load ASAp's learned state from and save it to (default: this process only)")
    asap_max_nodes: int = config_field(1_000_000, ge=1, help="most trie nodes kept per prompt and grammar; "
                                       "least recently used subtrees are evicted (soundly)")
    asap_tenant: str | None = config_field(
        None, help="learn in this tenant's own in-memory state instead of the process's (a server sets it per API "
                   "key under asap_scope=api_key)")
    asap_private: bool = config_field(
        False, help="learn in a state private to this transform, dropped with it (a server sets it per request "
                    "under asap_scope=request)")

    def validate(self) -> None:
        super().validate()
        if sum([self.asap_state is not None, self.asap_tenant is not None, self.asap_private]) > 1:
            raise ConfigError("give at most one of asap_state, asap_tenant and asap_private")


def compile_for(config: GrammarConfig, context: TransformContext) -> CompiledGrammar:
    """Compile the config's grammar for the context's tokenizer (cached per grammar and vocabulary)."""
    if config.grammar_file:
        if config.grammar.strip():
            raise ConfigError("give grammar=TEXT or grammar_file=PATH, not both")
        spec = grammar_file_spec(config.grammar_file, config.grammar_format)
    elif not config.grammar.strip():
        raise ConfigError("grammar decoding needs grammar=TEXT (or, in the operator's own settings, grammar_file=PATH: "
                          "a .lark, .gbnf, .json or .regex file)")
    else:
        spec = grammar_spec(config.grammar, config.grammar_format)
    vocab = vocabulary_for(context.tokenizer, context.vocab_size or None, context.eos_token_ids)
    engine = get_engine(config.engine, config.components)
    return engine.compile(spec, vocab, max_states=context.max_grammar_states)


def make_gcd(config: GrammarConfig, context: TransformContext) -> LogitsTransform:
    return GrammarConstrainedTransform(compile_for(config, context), config)


def make_asap(config: AsapConfig, context: TransformContext) -> LogitsTransform:
    compiled = compile_for(config, context)
    if config.asap_private:
        store = AsapStateStore()
    elif config.asap_tenant is not None:
        store = tenant_store(config.asap_tenant)
    else:
        store = state_store(config.asap_state)
    return AsapTransform(compiled, config, store, config.asap_max_nodes)


GCD = transform_decoder(
    "gcd", GrammarConfig, make_gcd,
    "grammar-constrained decoding: mask the tokens a grammar forbids (Lark, GBNF, JSON schema, regex)",
    claim="grammar-constrained", claim_note="P(t | w) restricted to the tokens the grammar allows, at each step",
)

ASAP = transform_decoder(
    "asap", AsapConfig, make_asap,
    "grammar-aligned sampling (ASAp, Park et al. 2024): learns to sample P(w | w in grammar) over calls",
    claim="grammar-aligned", claim_note="samples converge to P(w | w in the grammar's language)",
)
