"""Input-guided Aggressive Decoding (Sun et al. 2021; Ge et al. 2022): draft the whole remaining input from the
aligned position; after a mismatch, re-align once the last generated tokens match a unique input position.

Made for tasks whose output mostly copies the input (grammar correction, editing). The input span is the prompt,
or a ``source`` text (or ``source_ids``) given by the user. With greedy verification the output is identical to
greedy decoding.

Where the output is not aligned with the input (the model rewrites a sentence, or repeats itself), the paper's
drafter proposes nothing and the step decodes one token. With ``fallback`` it drafts by n-gram lookup instead: the
continuation of the latest earlier occurrence of the last generated tokens, in the generated text first, then in the
whole context. Its drafts are accepted less often than input drafts, so it pays only where a further token in a
block is cheap: by default it is on where the session says so (transformers on a CPU, whose block forwards cost
little more than one token) and off in llama.cpp (whose block forwards cost a step of their own) and where the cost
is unknown (vLLM's proposer, whose engine verifies a fixed number of draft tokens). The measurements behind these
defaults are in docs/drafters.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..contracts.config import DecoderConfig, config_field
from ..contracts.errors import ConfigError
from .draft import Draft, Drafter
from .prompt_lookup import find_continuation
from .schedule import CHEAP_BLOCK_TOKEN, cheap_block_tokens


@dataclasses.dataclass(frozen=True)
class IADConfig(DecoderConfig):
    """Settings of the Input-guided Aggressive Decoding drafter."""

    owner = "drafter"

    source: str | None = config_field(None, help="the input span as text (default: the prompt)")
    source_ids: tuple[int, ...] | None = config_field(None, help="the input span as token ids (default: the prompt)")
    max_draft_tokens: int = config_field(64, ge=1, help="most input tokens drafted per step")
    max_match_ngram: int = config_field(3, ge=1, help="longest generated suffix used to re-align with the input")
    adaptive: bool = config_field(True, help="shorten drafts after early mismatches, regrow them after full acceptance")
    fallback: bool | None = config_field(
        None, help="while not aligned with the input, draft by n-gram lookup in the generated text and the context "
                   "(default: where a further token in a verified block is known to be cheap: transformers)")
    fallback_tokens: int = config_field(10, ge=1, help="most tokens of a fallback (n-gram lookup) draft")

    def validate(self) -> None:
        super().validate()
        if self.source is not None and self.source_ids is not None:
            raise ConfigError("give the iad input span as source (text) or source_ids, not both")
        if self.source is not None and not self.source.strip():
            raise ConfigError(f"iad: the input span source={self.source!r} is empty; give the text the output edits")
        if self.source_ids is not None and len(self.source_ids) == 0:
            raise ConfigError("iad: the input span source_ids=() is empty; give the token ids the output edits")


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens (transformers tokenizers) or as the tokenizer gives them."""
    if tokenizer is None:
        raise ConfigError("iad: source text needs the runtime's tokenizer; pass source_ids instead")
    try:
        ids = tokenizer.encode(text, add_special_tokens=False)
    except TypeError:
        ids = tokenizer.encode(text)
    return [int(t) for t in ids]


@dataclasses.dataclass
class _Alignment:
    source: np.ndarray
    prompt_length: int
    position: int | None
    seen: int
    cap: int
    #: the input position where the alignment was last lost: edits move forward through the input, so an
    #: ambiguous re-alignment prefers the first match at or after it
    anchor: int = 0
    #: whether the last draft came from the input (else from the fallback lookup)
    from_input: bool = False


class IADDrafter(Drafter):
    """Copies the input span from the aligned position; re-aligns on a unique n-gram of the generated suffix."""

    #: the fallback pays where a further token in a verified block costs less than this share of a forward
    CHEAP_BLOCK_TOKEN = CHEAP_BLOCK_TOKEN
    cheap = True

    def __init__(self, config: IADConfig, tokenizer: Any = None, block_token_cost: float | None = None,
                 sources: Sequence[Sequence[int]] | None = None):
        """``block_token_cost``: what one more token in a verified block costs, as a share of a forward pass (the
        session's ``forward_cost`` hint); it decides ``fallback=None``. ``sources`` gives each row its own input span
        (predicted outputs: each request's prediction); it wins over ``source``/``source_ids`` and the prompt."""
        self.config = config
        self.fallback = (config.fallback if config.fallback is not None
                         else cheap_block_tokens(block_token_cost))
        self.fixed_source: list[int] | None = None
        if config.source_ids is not None:
            self.fixed_source = [int(t) for t in config.source_ids]
        elif config.source is not None:
            self.fixed_source = encode_text(tokenizer, config.source)
            if not self.fixed_source:
                raise ConfigError(f"iad: the input span source={config.source!r} encodes to no tokens")
        self.rows: list[_Alignment] = []
        self.sources = None if sources is None else [[int(t) for t in s] for s in sources]

    def start(self, prompts: Sequence[Sequence[int]]) -> None:
        self.rows = []
        for row, prompt in enumerate(prompts):
            own = self.sources[row] if self.sources is not None and row < len(self.sources) else None
            span = own if own else (self.fixed_source if self.fixed_source is not None else [int(t) for t in prompt])
            if not span:
                raise ConfigError("iad: the input span is empty (empty prompt and no source); nothing to copy")
            self.rows.append(_Alignment(
                source=np.asarray(span, dtype=np.int64),
                prompt_length=len(prompt),
                # a given source is what the output starts from; a prompt holds instructions first, so wait for
                # the generated text to point at its position
                position=0 if own or self.fixed_source is not None else None,
                seen=len(prompt),
                cap=self.config.max_draft_tokens,
            ))

    def _realign(self, state: _Alignment, generated: np.ndarray) -> int | None:
        """The input position after the generated suffix, matched on 1..max_match_ngram tokens.

        A suffix found exactly once wins at the shortest such length. Where even the longest suffix is found more
        than once, the first match at or after the anchor (where the alignment was lost) is taken, since edits
        move forward through the input.
        """
        src = state.source
        ambiguous: np.ndarray | None = None
        for n in range(1, self.config.max_match_ngram + 1):
            if generated.shape[0] < n or src.shape[0] < n:
                break
            windows = np.lib.stride_tricks.sliding_window_view(src, n)
            hits = np.flatnonzero((windows == generated[-n:]).all(axis=1))
            if hits.size == 0:
                break
            if hits.size == 1:
                return int(hits[0]) + n
            ambiguous = hits + n
        if ambiguous is not None:
            ahead = ambiguous[ambiguous >= state.anchor]
            if ahead.size:
                return int(ahead[0])
        return None

    def propose(self, contexts: Sequence[Sequence[int]], limits: Sequence[int]) -> list[Draft]:
        out = []
        for row, (context, limit) in enumerate(zip(contexts, limits)):
            state = self.rows[row]
            new = np.asarray(context[state.seen:], dtype=np.int64)
            if state.position is not None and new.size:
                expected = state.source[state.position: state.position + new.size]
                if expected.shape == new.shape and bool((expected == new).all()):
                    state.position += int(new.size)
                else:
                    state.anchor = state.position
                    state.position = None
            fresh = False
            if state.position is None and len(context) > state.prompt_length:
                generated = np.asarray(context[state.prompt_length:], dtype=np.int64)
                state.position = self._realign(state, generated)
                fresh = state.position is not None
            state.seen = len(context)
            state.from_input = state.position is not None
            want = min(limit, state.cap)
            if state.position is not None and want > 0:
                out.append(Draft(state.source[state.position: state.position + want].tolist(), fresh=fresh))
            elif self.fallback and limit > 0:
                out.append(Draft(self._lookup(state, context, min(limit, self.config.fallback_tokens)), fresh=fresh))
            else:
                out.append(Draft(fresh=fresh))
        return out

    def _lookup(self, state: _Alignment, context: Sequence[int], length: int) -> list[int]:
        """The fallback draft: what followed the latest earlier occurrence of the context's last 1-3 tokens, looked
        up in the generated text first (a model repeating itself), then in the whole context."""
        tokens = np.asarray(context, dtype=np.int64)
        generated = tokens[state.prompt_length:]
        for span in (generated, tokens):
            if span.shape[0] >= 2:
                found = find_continuation(span, 3, 1, length, latest=True)
                if found:
                    return found
        return []

    def feedback(self, row: int, draft: Draft, accepted_path: Sequence[int]) -> None:
        state = self.rows[row]
        if not self.config.adaptive or not len(draft) or not state.from_input:
            return  # fallback drafts say nothing about how far the input is copied
        accepted = len(accepted_path)
        if accepted < len(draft):
            state.cap = min(self.config.max_draft_tokens, max(8, 2 * (accepted + 1)))
        else:
            state.cap = min(self.config.max_draft_tokens, 2 * state.cap)
