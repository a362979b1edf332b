"""The multi-row session a search decoder needs (beams, candidates, samples as rows of one batch).

A session that implements ``select`` (transformers, toy models) is used as it is. A runtime whose main session
holds one sequence (llama.cpp) gives a factory in ``DecodeContext.open_rows``: called with the number of rows the
search needs and how many tokens past ``max_new_tokens`` a row may hold (DeAL's lookahead), as
``open_rows(rows, extra_tokens)``, it returns ``(session, prompt_logits)`` holding the same prompts, one row each,
able to grow to that many rows (llama.cpp: a second context whose sequences share the prompt in a unified KV cache).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ..contracts.decoder import DecodeContext
from ..contracts.errors import ConfigError, RuntimeAdapterError
from ..contracts.session import ModelSession


def can_select(session: ModelSession) -> bool:
    return type(session).select is not ModelSession.select


@contextlib.contextmanager
def search_session(ctx: DecodeContext, rows: int, decoder: str,
                   extra_tokens: int = 0) -> Iterator[tuple[ModelSession, torch.Tensor]]:
    """``(session, logits after each prompt)`` able to hold ``rows`` rows; a made session is closed on exit."""
    if ctx.max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens={ctx.max_new_tokens} must be >= 0")
    factory = ctx.open_rows
    if factory is not None:
        session, logits = factory(rows, extra_tokens)
        try:
            yield session, logits
        finally:
            close = getattr(session, "close", None)
            if close is not None:
                close()
        return
    session = ctx.session
    if session is None or ctx.prompt_logits is None:
        raise ConfigError(f"decoder {decoder!r} needs a model session and the logits after the prompt")
    if not can_select(session):
        raise RuntimeAdapterError(
            f"decoder {decoder!r} needs {rows} sequences side by side, but the {ctx.runtime or 'runtime'} session "
            f"{type(session).__name__} holds one and the adapter gave no DecodeContext.open_rows"
        )
    if session.batch_size != len(ctx.prompts):
        raise RuntimeAdapterError(
            f"decoder {decoder!r} expects one session row per prompt, got {session.batch_size} rows "
            f"for {len(ctx.prompts)} prompts"
        )
    yield session, ctx.prompt_logits
