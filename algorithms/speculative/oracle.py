"""The oracle drafter, for benchmarks: drafts the recorded continuation of each request (for example the target's
own greedy output, recorded in an earlier run), so it bounds what any drafter can reach on a workload.

While the generated tokens are a prefix of the recording, the draft is the next recorded tokens: with the
target's greedy output recorded, greedy speculative decoding accepts every draft token. Where the output departs
from the recording (another runtime's numerics, sampling), the drafter re-aligns as Input-guided Aggressive
Decoding does: on the longest suffix of the generated tokens (at most ``max_match_ngram``) found in the
recording, the first such place at or after where the alignment was lost; with ``realign=False`` it drafts
nothing from then on.

With ``copy_only`` each draft is cut to the longest prefix of the recorded tokens that occurs somewhere in the
context (prompt and output so far): what a drafter that copies one run of its context per step could at best
propose. It bounds prompt lookup and IAD. For suffix drafting it is an approximate bound, since suffix back-off can
join two runs and its corpus holds earlier outputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..contracts.config import DecoderConfig, config_field
from ..contracts.errors import ConfigError
from .draft import Draft, Drafter

Recording = Sequence[int]


@dataclasses.dataclass(frozen=True)
class OracleConfig(DecoderConfig):
    """Settings of the oracle drafter (benchmarks only: it needs each request's recorded continuation)."""

    owner = "drafter"

    continuation_ids: tuple[int, ...] | None = config_field(
        None, help="the recorded continuation (token ids after the prompt), used for every row without its own "
                   "entry in the drafter's source")
    max_draft_tokens: int = config_field(64, ge=1, help="most recorded tokens drafted per step")
    realign: bool = config_field(True, help="after the output departs from the recording, re-align on its last "
                                            "tokens (else draft nothing from then on)")
    max_match_ngram: int = config_field(3, ge=1, help="longest generated suffix used to re-align")
    copy_only: bool = config_field(False, help="draft only the longest prefix of the recorded tokens that occurs in "
                                               "the context: the bound of drafters that copy one run of the prompt "
                                               "and output per step (prompt lookup, iad)")


@dataclasses.dataclass
class _Row:
    recordings: list[list[int]]
    prompt_length: int
    #: index of the recording followed and the position in it of the next token (None: not aligned)
    which: int = 0
    position: int | None = 0
    seen: int = 0
    #: where the alignment was last lost: a re-alignment prefers the first match at or after it
    anchor: int = 0


def _as_recordings(value: Recording | Sequence[Recording]) -> list[list[int]]:
    """One recording (a sequence of ints) or several (a sequence of sequences), as lists."""
    items: list[Any] = list(value)
    if items and hasattr(items[0], "__len__"):
        return [[int(t) for t in rec] for rec in items]
    return [[int(t) for t in items]]


class OracleDrafter(Drafter):
    """Drafts each row's recorded continuation from the current position.

    ``source``: a mapping from a prompt (its token ids, as a tuple) to its recorded continuation, or to several
    (a set of recordings: the one the output agrees with longest is followed). Rows whose prompt is not in it
    use ``config.continuation_ids``; a row with neither gets no drafts.
    """

    deterministic = True
    cheap = True

    def __init__(self, config: OracleConfig,
                 source: Mapping[tuple[int, ...], Recording | Sequence[Recording]] | None = None):
        if config.continuation_ids is None and source is None:
            raise ConfigError("the oracle drafter needs a recorded continuation: give continuation_ids (token ids "
                              "after the prompt) or a source mapping prompts to continuations")
        self.config = config
        self.source = {tuple(int(t) for t in k): _as_recordings(v) for k, v in (source or {}).items()}
        self.default = None if config.continuation_ids is None else [[int(t) for t in config.continuation_ids]]
        self.rows: list[_Row] = []

    def start(self, prompts: Sequence[Sequence[int]]) -> None:
        self.rows = []
        for prompt in prompts:
            key = tuple(int(t) for t in prompt)
            recordings = self.source.get(key, self.default) or []
            self.rows.append(_Row(recordings, len(prompt), position=0 if recordings else None, seen=len(prompt)))

    def _follow(self, state: _Row, generated: list[int], new: list[int]) -> None:
        """Advance the position over the new tokens, or switch recording, or re-align."""
        if state.position is not None:
            rec = state.recordings[state.which]
            if rec[state.position: state.position + len(new)] == new:
                state.position += len(new)
                return
            state.anchor = state.position
        # another recording the whole output agrees with (several recorded outputs of one prompt)
        for i, other in enumerate(state.recordings):
            if other[: len(generated)] == generated:
                state.which, state.position = i, len(generated)
                return
        state.position = self._realign(state, generated) if self.config.realign else None

    def _realign(self, state: _Row, generated: list[int]) -> int | None:
        rec = state.recordings[state.which] if state.recordings else []
        for n in range(min(self.config.max_match_ngram, len(generated)), 0, -1):
            tail = generated[-n:]
            hits = [i + n for i in range(len(rec) - n + 1) if rec[i: i + n] == tail]
            if hits:
                ahead = [h for h in hits if h >= state.anchor]
                return ahead[0] if ahead else hits[0]
        return None

    def propose(self, contexts: Sequence[Sequence[int]], limits: Sequence[int]) -> list[Draft]:
        out = []
        for row, (context, limit) in enumerate(zip(contexts, limits)):
            state = self.rows[row]
            if not state.recordings:
                out.append(Draft())
                continue
            new = [int(t) for t in context[state.seen:]]
            if new:
                generated = [int(t) for t in context[state.prompt_length:]]
                self._follow(state, generated, new)
                state.seen = len(context)
            want = min(int(limit), self.config.max_draft_tokens)
            if state.position is None or want <= 0:
                out.append(Draft())
                continue
            rec = state.recordings[state.which]
            draft = rec[state.position: state.position + want]
            if self.config.copy_only:
                draft = draft[: longest_copy(context, draft)]
            out.append(Draft(draft))
        return out


def longest_copy(context: Sequence[int], tokens: Sequence[int]) -> int:
    """The length of the longest prefix of ``tokens`` found as a contiguous run in ``context``."""
    if not len(tokens):
        return 0
    best = 0
    n = len(context)
    for start in np.flatnonzero(np.asarray(context, dtype=np.int64) == int(tokens[0])).tolist():
        k = 1
        while k < len(tokens) and start + k < n and context[start + k] == tokens[k]:
            k += 1
        best = max(best, k)
        if best == len(tokens):
            break
    return best
