"""Grammar decoding: grammar engines (llguidance, outlines-core), tokenizer bridges, GCD and ASAp."""

from .asap_state import AsapStateStore, TrieKey, forget_asap_state, state_store, tenant_store
from .asap_trie import AsapTrie, ModelMismatchError, TrieNode
from .decoders import ASAP, GCD, AsapConfig, GrammarConfig, compile_for
from .engine import CompiledGrammar, GrammarEngine, GrammarMatcher
from .engines import get_engine
from .spec import EXTENSIONS, FORMATS, GrammarError, GrammarSpec, grammar_file_spec, grammar_spec, infer_format
from .tokenizers import TokenVocabulary, byte_vocabulary, from_llama, from_transformers, toy_vocabulary, vocabulary_for
from .transforms import AsapTransform, GrammarConstrainedTransform

__all__ = [
    "ASAP", "EXTENSIONS", "FORMATS", "GCD", "AsapConfig", "AsapStateStore", "AsapTransform", "AsapTrie",
    "CompiledGrammar", "GrammarConfig", "GrammarConstrainedTransform", "GrammarEngine", "GrammarError",
    "GrammarMatcher", "GrammarSpec", "ModelMismatchError", "TokenVocabulary", "TrieKey", "TrieNode",
    "byte_vocabulary", "compile_for", "forget_asap_state", "from_llama", "from_transformers", "get_engine",
    "grammar_file_spec", "grammar_spec", "infer_format", "state_store", "tenant_store", "toy_vocabulary",
    "vocabulary_for",
]
