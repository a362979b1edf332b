"""transformers' own logits processors and stopping criteria as anydecode's typed runtime rules.

``model.generate`` prepares a ``LogitsProcessorList`` (repetition penalty, no-repeat n-grams, bad words, min new
tokens, forced tokens, ...) and a ``StoppingCriteriaList`` (stop strings, the user's criteria) before it calls a
``custom_generate`` function. Every anydecode decoder applies them through these two classes, with each row's ids as
transformers would give them: the left-padded prompt row followed by the row's generated tokens, so processors that
count positions (``min_new_tokens``) count as they do in transformers' own loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from anydecode.algorithms.contracts.runtime import RuntimeProcessors, StoppingRule


def _ids(prompts: torch.Tensor, prompt_rows: Sequence[int], generated: Sequence[Sequence[int]]) -> torch.Tensor:
    rows = prompts.index_select(0, torch.as_tensor(list(prompt_rows), dtype=torch.long, device=prompts.device))
    tail = torch.as_tensor([list(g) for g in generated], dtype=torch.long, device=prompts.device)
    return torch.cat([rows, tail.reshape(len(prompt_rows), -1)], dim=1)


class HFProcessors(RuntimeProcessors):
    """A transformers ``LogitsProcessorList`` applied to rows of any decoder (grouped by generated length)."""

    def __init__(self, processors: Any, prompts: torch.Tensor):
        self.processors = processors
        #: the prompt rows as transformers holds them, left padding included, shape ``(prompts, length)``
        self.prompts = prompts

    def __call__(self, prompt_rows: Sequence[int], generated: Sequence[Sequence[int]],
                 logits: torch.Tensor) -> torch.Tensor:
        out = logits.clone()
        groups: dict[int, list[int]] = {}
        for i, g in enumerate(generated):
            groups.setdefault(len(g), []).append(i)
        for members in groups.values():
            ids = _ids(self.prompts, [prompt_rows[i] for i in members], [generated[i] for i in members])
            index = torch.as_tensor(members, dtype=torch.long, device=logits.device)
            scores = logits.index_select(0, index)
            out[index] = self.processors(ids, scores.to(torch.float32)).to(logits.dtype)
        return out


class HFStopping(StoppingRule):
    """transformers stopping criteria (stop strings, custom ones) for one row at a time."""

    def __init__(self, criteria: Sequence[Any], prompts: torch.Tensor):
        self.criteria = list(criteria)
        self.prompts = prompts

    def __call__(self, prompt_row: int, generated: Sequence[int]) -> bool:
        ids = _ids(self.prompts, [prompt_row], [generated])
        return any(bool(torch.as_tensor(c(ids, None)).reshape(-1)[0]) for c in self.criteria)
