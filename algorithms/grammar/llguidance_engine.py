"""The ``llguidance`` grammar engine: Lark, GBNF, JSON schema and regex through llguidance's Earley parser.

llguidance computes each mask on the fly (no precompilation), forks with ``deep_copy`` and rolls back any number
of tokens. Its matcher never raises on a bad grammar; it enters an error state, which this module turns into a
GrammarError naming the line and column.
"""

from __future__ import annotations

import collections
import re
import threading
from typing import Any

import numpy as np

from .engine import CompiledGrammar, GrammarEngine, GrammarMatcher, unpack_bitmask
from .spec import GrammarError, GrammarSpec, line_column, parse_error
from .tokenizers import TokenVocabulary


def _import() -> Any:
    try:
        import llguidance
    except ImportError as exc:
        raise GrammarError(f"the llguidance grammar engine needs the llguidance package ({exc}): "
                           "pip install llguidance") from None
    return llguidance


class _TokenizerView:
    """What ``llguidance.TokenizerWrapper`` reads from a tokenizer."""

    def __init__(self, vocab: TokenVocabulary):
        self.eos_token_id = min(vocab.eos_token_ids)
        self.bos_token_id = None
        self.tokens = list(vocab.token_bytes)
        self.special_token_ids = sorted(vocab.special_ids)
        self._vocab = vocab

    def __call__(self, text: str) -> list[int]:
        return self._vocab.tokenize(text)


_LARK_POSITION = re.compile(r"^(?:at )?(\d+)\((\d+)\): (.*)", re.S)
_REGEX_CARET = re.compile(r"regex parse error:\n {4}(.*)\n {4}( *)\^+\n(?:error: )?(.*?)(?:\n|$)")


def _grammar_error(spec: GrammarSpec, lark_text: str | None, message: str) -> GrammarError:
    """Translate an llguidance error message into a GrammarError with a line and column where it has one."""
    if spec.format == "json_schema":
        return GrammarError(f"JSON schema not supported by the llguidance engine: {message.strip()}")
    if spec.format == "regex":
        m = _REGEX_CARET.search(message)
        if m:
            offset = len(m.group(2))
            line, column = line_column(spec.text, offset)
            return parse_error("regex", spec.text, line, column, m.group(3))
    m = _LARK_POSITION.match(message.strip())
    if m:
        line, column, reason = int(m.group(1)), int(m.group(2)), m.group(3)
        unknown = re.match(r'unknown name: "([^"]+)"', reason)
        if unknown and spec.format == "lark":
            # llguidance points at the rule; point at the reference itself
            line, column = _find_reference(spec.text, line, column, unknown.group(1))
        if spec.format == "lark":
            return parse_error("lark", spec.text, line, column, reason)
        # a GBNF grammar was converted to Lark first: report the position in the converted text too
        err = parse_error("gbnf", lark_text or spec.text, line, column, reason)
        return GrammarError(f"{err} (position in the grammar converted to Lark)", line=line, column=column)
    if "Empty grammar" in message:
        return GrammarError(f"the {spec.format} grammar is empty")
    return GrammarError(f"{spec.format} grammar rejected by llguidance: {message.strip()}")


def _find_reference(text: str, line: int, column: int, name: str) -> tuple[int, int]:
    """Line and column of the first use of ``name`` at or after (line, column), outside string literals."""
    lines = text.split("\n")
    offset = sum(len(x) + 1 for x in lines[:line - 1]) + column - 1
    pattern = re.compile(r'"(?:[^"\\]|\\.)*"|/(?:[^/\\]|\\.)*/|(?<![\w.])' + re.escape(name) + r"(?![\w])")
    for m in pattern.finditer(text, offset):
        if m.group(0) == name:
            return line_column(text, m.start())
    return line, column


def _gbnf_to_lark(text: str) -> str:
    from llguidance.gbnf_to_lark import GbnfToLarkError, any_to_lark

    try:
        return any_to_lark(text)
    except GbnfToLarkError as exc:
        line, column = line_column(text, exc.pos.pos)
        reason = str(exc).split(" at line ")[0]
        raise parse_error("gbnf", text, line, column, reason) from None
    except Exception as exc:  # the converter raises plain exceptions for unknown or duplicate rules
        reason = str(exc)
        m = re.search(r"Rule '([^']+)'", reason)
        offset = 0
        if m:
            ref = re.search(rf"(?<![\w-]){re.escape(m.group(1))}(?![\w-])(?!\s*::=)", text)
            offset = ref.start() if ref else 0
        line, column = line_column(text, offset)
        raise parse_error("gbnf", text, line, column, reason) from None


class LLGuidanceMatcher(GrammarMatcher):
    def __init__(self, compiled: LLGuidanceGrammar, inner: Any):
        super().__init__(compiled)
        self.inner = inner
        self._words = np.zeros((self.vocab_size + 31) // 32, dtype=np.int32)

    def _engine_mask(self) -> np.ndarray:
        if self.inner.is_error():
            return np.zeros(self.vocab_size, dtype=np.bool_)
        self.inner.unsafe_compute_mask_ptr(self._words.ctypes.data, self._words.nbytes)
        return unpack_bitmask(self._words, self.vocab_size)

    def _engine_bitmask(self) -> np.ndarray:
        words = np.zeros((self.vocab_size + 31) // 32, dtype=np.int32)
        if not self.inner.is_error():
            self.inner.unsafe_compute_mask_ptr(words.ctypes.data, words.nbytes)
        return words

    def _engine_consume(self, token: int) -> bool:
        if self.inner.validate_tokens([token]) != 1:
            return False
        return bool(self.inner.consume_token(token))

    def _engine_rollback(self, n: int) -> None:
        self.inner.rollback(n)

    def _engine_fork(self) -> GrammarMatcher:
        assert isinstance(self.compiled, LLGuidanceGrammar)
        return LLGuidanceMatcher(self.compiled, self.inner.deep_copy())

    def is_complete(self) -> bool:
        return not self.inner.is_error() and bool(self.inner.is_accepting())


class LLGuidanceGrammar(CompiledGrammar):
    def __init__(self, spec: GrammarSpec, vocabulary: TokenVocabulary, prototype: Any):
        super().__init__(spec, vocabulary, "llguidance")
        self.prototype = prototype

    def matcher(self) -> GrammarMatcher:
        return LLGuidanceMatcher(self, self.prototype.deep_copy())


class LLGuidanceEngine(GrammarEngine):
    """Lark (llguidance's dialect), GBNF (converted to Lark), JSON schema and regex."""

    name = "llguidance"
    formats = frozenset({"lark", "gbnf", "json_schema", "regex"})

    def __init__(self) -> None:
        super().__init__()
        self._tokenizers: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._tok_lock = threading.Lock()

    def tokenizer(self, vocab: TokenVocabulary) -> Any:
        """llguidance's tokenizer for a vocabulary (built once per vocabulary; about a second at 50k tokens)."""
        llg = _import()
        with self._tok_lock:
            tok = self._tokenizers.get(vocab.fingerprint)
            if tok is None:
                tok = llg.LLTokenizer(llg.TokenizerWrapper(_TokenizerView(vocab)), n_vocab=vocab.vocab_size,
                                      eos_token=sorted(vocab.eos_token_ids))
                self._tokenizers[vocab.fingerprint] = tok
                while len(self._tokenizers) > 4:
                    self._tokenizers.popitem(last=False)
            return tok

    def _compile(self, spec: GrammarSpec, vocabulary: TokenVocabulary, max_states: int | None) -> CompiledGrammar:
        llg = _import()
        limits = None if max_states is None else llg.LLParserLimits(max_lexer_states=max_states)
        lark_text = None
        if spec.format == "lark":
            grammar = llg.LLMatcher.grammar_from_lark(spec.text)
        elif spec.format == "gbnf":
            lark_text = _gbnf_to_lark(spec.text)
            grammar = llg.LLMatcher.grammar_from_lark(lark_text)
        elif spec.format == "json_schema":
            spec.json_object()  # JSON syntax errors with line and column
            try:
                grammar = llg.LLMatcher.grammar_from_json_schema(spec.text)
            except ValueError as exc:
                raise GrammarError(f"JSON schema not supported by the llguidance engine: {exc}") from None
        else:
            grammar = llg.LLMatcher.grammar_from_regex(spec.text)
        tokenizer = self.tokenizer(vocabulary)
        problem = llg.LLMatcher.validate_grammar(grammar, tokenizer, limits=limits)
        if problem and not problem.startswith("WARNING"):
            raise _grammar_error(spec, lark_text, problem)
        prototype = llg.LLMatcher(tokenizer, grammar, log_level=0, limits=limits)
        if prototype.is_error():
            raise _grammar_error(spec, lark_text, prototype.get_error())
        return LLGuidanceGrammar(spec, vocabulary, prototype)
