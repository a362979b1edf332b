"""The ``outlines`` grammar engine: regex and JSON schema through outlines-core's token-level automaton.

outlines-core compiles a regex (a JSON schema becomes one first) and the vocabulary into a deterministic automaton
over token ids: a state is an integer, so forking is free and any state's allowed tokens can be asked at any
time. Building the index costs time proportional to (automaton states x vocabulary); masks are cached per state.
"""

from __future__ import annotations

import collections
import re
import threading
from typing import Any

import numpy as np

from .engine import CompiledGrammar, GrammarEngine, GrammarMatcher, pad_words, states_error
from .spec import GrammarError, GrammarSpec, line_column, parse_error
from .tokenizers import TokenVocabulary


def _import() -> Any:
    try:
        import outlines_core
    except ImportError as exc:
        raise GrammarError(f"the outlines grammar engine needs the outlines-core package ({exc}): "
                           "pip install outlines-core") from None
    return outlines_core


def _regex_position(text: str) -> tuple[int, int, str]:
    """Line, column and reason of a regex syntax error, read from Python's parser (its syntax is close enough)."""
    try:
        re.compile(text)
    except re.error as exc:
        pos = exc.pos if exc.pos is not None else 0
        line, column = line_column(text, pos)
        return line, column, exc.msg
    return 1, 1, "the regex syntax is not supported by outlines-core"


#: keywords outlines-core 0.2 accepts but ignores, so its automaton would allow values the schema forbids
IGNORED_KEYWORDS = frozenset({
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "uniqueItems", "contains",
    "minContains", "maxContains", "minProperties", "maxProperties", "patternProperties", "propertyNames",
    "dependentRequired", "dependentSchemas", "unevaluatedProperties", "unevaluatedItems", "contentEncoding",
    "contentMediaType",
})
_NAMED_SCHEMAS = ("properties", "$defs", "definitions")
_SUBSCHEMA = ("items", "additionalProperties", "not", "if", "then", "else")
_SUBSCHEMA_LISTS = ("prefixItems", "anyOf", "oneOf", "allOf")


def ignored_keywords(schema: object, where: str = "") -> list[str]:
    """JSON pointers of the keywords in ``schema`` that outlines-core would silently ignore."""
    found: list[str] = []
    if not isinstance(schema, dict):
        return found
    for key, value in schema.items():
        if key in IGNORED_KEYWORDS:
            found.append(f"{where}/{key}")
        elif key in _NAMED_SCHEMAS and isinstance(value, dict):
            for name, sub in value.items():
                found += ignored_keywords(sub, f"{where}/{key}/{name}")
        elif key in _SUBSCHEMA:
            found += ignored_keywords(value, f"{where}/{key}")
        elif key in _SUBSCHEMA_LISTS and isinstance(value, list):
            for i, sub in enumerate(value):
                found += ignored_keywords(sub, f"{where}/{key}/{i}")
    return found


class OutlinesMatcher(GrammarMatcher):
    def __init__(self, compiled: OutlinesGrammar, state: int):
        super().__init__(compiled)
        self.states = [state]

    def _engine_mask(self) -> np.ndarray:
        assert isinstance(self.compiled, OutlinesGrammar)
        return self.compiled.mask(self.states[-1])

    def _engine_bitmask(self) -> np.ndarray:
        assert isinstance(self.compiled, OutlinesGrammar)
        return self.compiled.words(self.states[-1])

    def _engine_consume(self, token: int) -> bool:
        assert isinstance(self.compiled, OutlinesGrammar)
        nxt = self.compiled.index.get_next_state(self.states[-1], token)
        if nxt is None:
            return False
        self.states.append(nxt)
        return True

    def _engine_rollback(self, n: int) -> None:
        del self.states[len(self.states) - n:]

    def _engine_fork(self) -> GrammarMatcher:
        assert isinstance(self.compiled, OutlinesGrammar)
        twin = OutlinesMatcher(self.compiled, self.states[0])
        twin.states = list(self.states)
        return twin

    def is_complete(self) -> bool:
        assert isinstance(self.compiled, OutlinesGrammar)
        return self.compiled.is_final(self.states[-1])


class OutlinesGrammar(CompiledGrammar):
    def __init__(self, spec: GrammarSpec, vocabulary: TokenVocabulary, index: Any, regex: str):
        super().__init__(spec, vocabulary, "outlines")
        self.index = index
        self.regex = regex
        self._final = frozenset(index.get_final_states())
        self._masks: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._lock = threading.Lock()

    def is_final(self, state: int) -> bool:
        return state in self._final

    def mask(self, state: int) -> np.ndarray:
        """Allowed tokens of an automaton state, cached (packed bits) per state."""
        return np.unpackbits(self._packed(state), count=self.vocabulary.vocab_size, bitorder="little").view(np.bool_)

    def words(self, state: int) -> np.ndarray:
        """Allowed tokens of an automaton state as int32 words (a new array), from the same cache."""
        return pad_words(self._packed(state), self.vocabulary.vocab_size)

    def _packed(self, state: int) -> np.ndarray:
        with self._lock:
            packed = self._masks.get(state)
        if packed is None:
            mask = np.zeros(self.vocabulary.vocab_size, dtype=np.bool_)
            allowed = self.index.get_allowed_tokens(state)
            if allowed:
                mask[np.asarray(allowed, dtype=np.int64)] = True
            packed = np.packbits(mask, bitorder="little")
            with self._lock:
                self._masks[state] = packed
                while len(self._masks) > 4096:
                    self._masks.popitem(last=False)
        return packed

    def matcher(self) -> GrammarMatcher:
        return OutlinesMatcher(self, self.index.get_initial_state())

    def check_not_empty(self) -> None:
        """Empty language: no final state is reachable from the initial one (a search over the automaton)."""
        transitions = self.index.get_transitions()
        start = self.index.get_initial_state()
        seen = {start}
        todo = [start]
        while todo:
            state = todo.pop()
            if state in self._final:
                return
            for nxt in transitions.get(state, {}).values():
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        raise GrammarError(f"the {self.spec.format} grammar has an empty language for this vocabulary "
                           f"({self.vocabulary.source or 'unnamed'}): no sentence of it can be written")


class OutlinesEngine(GrammarEngine):
    """Regex and JSON schema (no context-free grammars: use llguidance for Lark and GBNF)."""

    name = "outlines"
    formats = frozenset({"json_schema", "regex"})

    def __init__(self) -> None:
        super().__init__()
        self._vocabularies: collections.OrderedDict[str, Any] = collections.OrderedDict()

    def vocabulary(self, vocab: TokenVocabulary) -> Any:
        oc = _import()
        hit = self._vocabularies.get(vocab.fingerprint)
        if hit is None:
            table: dict[bytes, list[int]] = {}
            for tid in vocab.text_ids():
                table.setdefault(vocab.token_bytes[tid], []).append(tid)
            hit = oc.Vocabulary(min(vocab.eos_token_ids), table)
            self._vocabularies[vocab.fingerprint] = hit
            while len(self._vocabularies) > 4:
                self._vocabularies.popitem(last=False)
        return hit

    def _compile(self, spec: GrammarSpec, vocabulary: TokenVocabulary, max_states: int | None) -> CompiledGrammar:
        oc = _import()
        if spec.format == "json_schema":
            ignored = ignored_keywords(spec.json_object())
            if ignored:
                raise GrammarError(
                    f"JSON schema not supported by the outlines engine: outlines-core ignores {', '.join(ignored)} "
                    "(its outputs could break them); use engine=llguidance, which enforces them")
            try:
                regex = oc.json_schema.build_regex_from_schema(spec.text)
            except (ValueError, TypeError) as exc:
                raise GrammarError(f"JSON schema not supported by the outlines engine: {exc}") from None
        else:
            regex = spec.text
        try:
            # outlines-core's automaton follows leftmost-first match semantics: without an end anchor, "a|ab"
            # loses "ab" (the first alternative ends the match). Anchoring the end makes it the whole language.
            index = oc.Index(f"(?:{regex})$", self.vocabulary(vocabulary))
        except ValueError as exc:
            message = str(exc)
            if "incompatible with the regex" in message:
                raise GrammarError(
                    f"the {spec.format} grammar has an empty language for this vocabulary "
                    f"({vocabulary.source or 'unnamed'}): {message}") from None
            if spec.format == "regex":
                line, column, reason = _regex_position(spec.text)
                raise parse_error("regex", spec.text, line, column, f"{reason} ({message})") from None
            raise GrammarError(f"outlines-core cannot compile the {spec.format} grammar: {message}") from None
        if max_states is not None:
            states = len(index.get_transitions())
            if states > max_states:
                raise states_error(spec, states, max_states)
        return OutlinesGrammar(spec, vocabulary, index, regex)
