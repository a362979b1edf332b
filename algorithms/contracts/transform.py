"""Logits transform: what sampling-time cores provide (sampling warpers, grammar masks, ASAp reweighting).

Lifecycle, the same in every runtime:

1. ``start(prompt_ids)`` when a request (one row) begins; returns that row's state.
2. ``apply(state, generated_ids, logits)`` before each token is chosen, with the ids generated so far (prompt
   excluded) and the raw next-token logits (1-D, vocabulary order); returns the new logits. A token the
   transform forbids gets ``-inf``.
3. ``finish(state, generated_ids, reason)`` once the row has ended (EOS, length, dead end or abort). ASAp learns
   from finished samples here.

``apply_rows(states, generated, logits)`` is step 2 for several rows at once (``logits`` ``(rows, vocab)``), as a
runtime's hook sees them: the default applies row by row; a transform that can batch (the grammar transforms: one
kernel call masks every row) overrides it, with the same result as row by row.

A transform must not keep references to the logits it was given; the adapter may reuse the buffer.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import torch

from .errors import REQUEST_ERRORS

TransformState = Any


class LogitsTransform(abc.ABC):
    """Per-request state plus a logits -> logits call plus an end-of-sequence callback."""

    def start(self, prompt_ids: Sequence[int]) -> TransformState:
        """Create the state of one new row."""
        return None

    @abc.abstractmethod
    def apply(self, state: TransformState, generated_ids: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        """Return the transformed next-token logits (1-D float tensor)."""

    def apply_rows(self, states: Sequence[TransformState], generated: Sequence[Sequence[int]], logits: torch.Tensor,
                   failed: dict[int, BaseException] | None = None) -> torch.Tensor:
        """The transformed logits of several rows (``logits`` ``(rows, vocab)``; row ``i`` has ``states[i]`` and
        ``generated[i]``) as a new ``(rows, vocab)`` tensor, equal to :meth:`apply` row by row, in row order.

        With ``failed`` given, an exception from one row is recorded there (row index -> exception) and that row's
        output is unspecified, while the other rows are transformed; without it the exception propagates.
        """
        out = []
        for i, (state, generated_ids) in enumerate(zip(states, generated)):
            try:
                out.append(self.apply(state, generated_ids, logits[i]))
            except REQUEST_ERRORS as exc:
                if failed is None:
                    raise
                failed[i] = exc
                out.append(logits[i].clone())
        return torch.stack(out) if out else logits.clone()

    def finish(self, state: TransformState, generated_ids: Sequence[int], reason: str) -> None:
        """Called once when the row ends; ``reason`` is ``stop``, ``length``, ``dead_end`` or ``abort``."""

    def forced_stop(self, state: TransformState) -> str | None:
        """A finish reason when the transform forbids every token (grammar dead end), else None."""
        return None


class IdentityTransform(LogitsTransform):
    """Leaves the logits as they are (greedy and plain sampling without warpers)."""

    def apply(self, state: TransformState, generated_ids: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        return logits

    def apply_rows(self, states: Sequence[TransformState], generated: Sequence[Sequence[int]], logits: torch.Tensor,
                   failed: dict[int, BaseException] | None = None) -> torch.Tensor:
        return logits


class ChainTransform(LogitsTransform):
    """Applies transforms in order; the state is the tuple of their states."""

    def __init__(self, transforms: Sequence[LogitsTransform]):
        self.transforms = list(transforms)

    def start(self, prompt_ids: Sequence[int]) -> TransformState:
        return tuple(t.start(prompt_ids) for t in self.transforms)

    def apply(self, state: TransformState, generated_ids: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        for transform, sub in zip(self.transforms, state):
            logits = transform.apply(sub, generated_ids, logits)
        return logits

    def apply_rows(self, states: Sequence[TransformState], generated: Sequence[Sequence[int]], logits: torch.Tensor,
                   failed: dict[int, BaseException] | None = None) -> torch.Tensor:
        for k, transform in enumerate(self.transforms):
            logits = transform.apply_rows([state[k] for state in states], generated, logits, failed)
        return logits

    def finish(self, state: TransformState, generated_ids: Sequence[int], reason: str) -> None:
        for transform, sub in zip(self.transforms, state):
            transform.finish(sub, generated_ids, reason)

    def forced_stop(self, state: TransformState) -> str | None:
        for transform, sub in zip(self.transforms, state):
            reason = transform.forced_stop(sub)
            if reason:
                return reason
        return None
