"""anydecode's drafters as llama-cpp-python draft models, for users of ``Llama(draft_model=...)``.

    from anydecode.plugins.llamacpp.draft import IADDraftModel
    llm = Llama(model_path=..., draft_model=IADDraftModel(max_draft_tokens=32))

llama-cpp-python verifies drafts by sampling each position with its own sampler and keeping drafts while they
match, which is exact for greedy and for sampling (with lower acceptance under sampling than anydecode's own
``generate(..., decoder="iad")``, which uses the rejection rule). A draft model only sees the context's token ids;
a call whose ids do not extend the previous call's starts a new request (the prompt is then every id but the
last, which llama.cpp has just sampled).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from anydecode.algorithms.speculative.aded import ADEDConfig, ADEDDrafter
from anydecode.algorithms.speculative.draft import Draft, Drafter
from anydecode.algorithms.speculative.iad import IADConfig, IADDrafter
from anydecode.algorithms.speculative.prompt_lookup import PromptLookupConfig, PromptLookupDrafter
from anydecode.algorithms.speculative.schedule import block_token_share

from ._runtime import import_llama_cpp
from .session import LlamaSession

LlamaDraftModel = import_llama_cpp().llama_speculative.LlamaDraftModel


class DrafterDraftModel(LlamaDraftModel):  # type: ignore[misc, valid-type]
    """Runs one anydecode drafter on llama.cpp's single sequence; tree drafts give their first-child chain."""

    def __init__(self, make_drafter: Callable[[], Drafter], num_pred_tokens: int):
        self.make_drafter = make_drafter
        self.num_pred_tokens = num_pred_tokens
        self.drafter: Drafter | None = None
        self._last: list[int] = []
        self._draft: Draft | None = None
        self.drafted = 0
        self.accepted = 0

    def _new_request(self, ids: list[int]) -> bool:
        return self.drafter is None or len(ids) <= len(self._last) or ids[: len(self._last)] != self._last

    def __call__(self, input_ids: Any, /, **kwargs: Any) -> Any:
        ids = [int(t) for t in np.asarray(input_ids).tolist()]
        if self._new_request(ids):
            self.drafter = self.make_drafter()
            self.drafter.start([ids[:-1]])
            self._draft = None
        elif self._draft is not None and len(self._draft):
            # the previous draft's tokens that llama.cpp kept are those now following the previous context
            tail = ids[len(self._last):]
            kept = 0
            for a, b in zip(tail, self._draft.tokens):
                if a != b:
                    break
                kept += 1
            kept = min(kept, len(tail) - 1)
            assert self.drafter is not None
            self.drafter.feedback(0, self._draft, list(range(kept)))
            self.accepted += kept
        assert self.drafter is not None
        draft = self.drafter.propose([ids], [self.num_pred_tokens])[0]
        if not draft.is_chain:
            path = draft.main_path()
            draft = Draft([draft.tokens[i] for i in path])
        self._last = ids
        self._draft = draft
        self.drafted += len(draft)
        return np.asarray(draft.tokens, dtype=np.intc)


class PromptLookupDraftModel(DrafterDraftModel):
    """Prompt lookup with adaptive draft length (llama-cpp-python's ``LlamaPromptLookupDecoding`` has a fixed one)."""

    def __init__(self, num_draft_tokens: int = 10, max_ngram: int = 3, min_ngram: int = 1, adaptive: bool = True,
                 max_draft_tokens: int = 32):
        config = PromptLookupConfig(num_draft_tokens=num_draft_tokens, max_ngram=max_ngram, min_ngram=min_ngram,
                                    adaptive=adaptive, max_draft_tokens=max_draft_tokens)
        super().__init__(lambda: PromptLookupDrafter(config), max(num_draft_tokens, max_draft_tokens))


class IADDraftModel(DrafterDraftModel):
    """Input-guided Aggressive Decoding: drafts the rest of the input span (the prompt, or ``source``/``source_ids``)
    from the aligned position. ``source`` text needs ``llama=`` to tokenize it."""

    def __init__(self, source: str | None = None, source_ids: Sequence[int] | None = None, llama: Any = None,
                 max_draft_tokens: int = 64, max_match_ngram: int = 3, adaptive: bool = True):
        ids = None if source_ids is None else tuple(int(t) for t in source_ids)
        config = IADConfig(source=source, source_ids=ids, max_draft_tokens=max_draft_tokens,
                           max_match_ngram=max_match_ngram, adaptive=adaptive)
        tokenizer = None
        if llama is not None:
            from .text import LlamaTokenizer

            tokenizer = LlamaTokenizer(llama)
        share = block_token_share(LlamaSession.forward_cost)
        super().__init__(lambda: IADDrafter(config, tokenizer, block_token_cost=share), max_draft_tokens)


class ADEDDraftModel(DrafterDraftModel):
    """ADED's tri-gram table (learnt online, kept across requests); llama.cpp verifies chains, so the draft is one
    path of ``max_depth`` tokens chosen by the PUCT score."""

    def __init__(self, max_depth: int = 8, exploration: float = 1.0, min_value: float = 0.02,
                 corpus_ids: Sequence[int] | None = None):
        config = ADEDConfig(max_nodes=max_depth, branching=1, max_depth=max_depth, exploration=exploration,
                            min_value=min_value, corpus_ids=None if corpus_ids is None else tuple(corpus_ids))
        self._shared = ADEDDrafter(config)
        super().__init__(lambda: self._shared, max_depth)
