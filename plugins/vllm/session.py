"""A model session over a vLLM ``LLM``: every append is one engine step for all rows, read back as logprobs.

vLLM gives no handle on its KV cache, so rows are kept as token lists and each step asks the engine for one token
per row with the top ``top_logprobs`` log-probabilities (prefix caching makes the shared prefix free); the way
vLLM's own beam search drives the engine. The logits a core sees are those log-probabilities, with the mass left
over spread evenly over the other tokens, so ``log_softmax`` gives back vLLM's log-probabilities exactly for the
top tokens and every search decision among them matches full logits. A block of k > 1 tokens reads the prompt
log-probabilities of the last k positions in the same single step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from anydecode.algorithms.contracts.errors import RuntimeAdapterError
from anydecode.algorithms.contracts.session import TokenRowsSession, token_rows


#: runs one engine step: ``(token-id prompts, SamplingParams) -> RequestOutputs`` in the same order
EngineStep = Callable[[list[list[int]], Any], list[Any]]


def offline_step(llm: Any) -> EngineStep:
    """Engine steps on an offline ``vllm.LLM``."""
    from vllm.inputs import TokensPrompt

    def step(prompts: list[list[int]], params: Any) -> list[Any]:
        return llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)

    return step


class VLLMSession(TokenRowsSession):
    """Rows of token ids on a vLLM engine (offline ``LLM`` or, through ``step``, the server's engine client)."""

    def __init__(self, model_config: Any, step: EngineStep, top_logprobs: int = 20,
                 eos_token_ids: Sequence[int] = ()):
        self.engine_step = step
        self.vocab_size = int(model_config.get_vocab_size())
        limit = int(getattr(model_config, "max_logprobs", top_logprobs) or top_logprobs)
        if limit >= 0 and top_logprobs > limit:
            raise RuntimeAdapterError(f"top_logprobs={top_logprobs} exceeds the engine's max_logprobs={limit}; "
                                      "build the LLM with max_logprobs=... or ask for fewer")
        self.top_logprobs = top_logprobs
        self.eos_token_ids = frozenset(int(t) for t in eos_token_ids)
        self.rows: list[list[int]] = []
        self.forward_passes = 0

    def _dense(self, logprobs: dict[int, Any]) -> torch.Tensor:
        row = torch.full((self.vocab_size,), float("-inf"), dtype=torch.float32)
        mass = 0.0
        for token, lp in logprobs.items():
            value = float(getattr(lp, "logprob", lp))
            row[int(token)] = value
            mass += math.exp(value)
        rest = 1.0 - mass
        others = self.vocab_size - len(logprobs)
        if rest > 1e-12 and others > 0:
            fill = math.log(rest / others)
            row = torch.where(torch.isinf(row), torch.tensor(fill, dtype=torch.float32), row)
        return row

    def _step(self, k: int) -> torch.Tensor:
        """One engine step for every row; logits after each row's last ``k`` tokens ``(B, k, V)``."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=self.top_logprobs,
                                prompt_logprobs=self.top_logprobs if k > 1 else None, detokenize=False)
        outs = self.engine_step([list(r) for r in self.rows], params)
        self.forward_passes += 1
        rows = []
        for out in outs:
            positions = []
            if k > 1:
                # prompt_logprobs[j] is the distribution of token j given the tokens before it
                for j in range(len(out.prompt_token_ids) - k + 1, len(out.prompt_token_ids)):
                    positions.append(self._dense(out.prompt_logprobs[j]))
            positions.append(self._dense(out.outputs[0].logprobs[0]))
            rows.append(torch.stack(positions))
        return torch.stack(rows)

    def start(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        self.rows = [list(p) for p in prompts]
        if not self.rows or any(not r for r in self.rows):
            raise RuntimeAdapterError("every prompt needs at least one token")
        return self._step(1)[:, -1]

    def append(self, tokens: torch.Tensor | Sequence[Sequence[int]]) -> torch.Tensor:
        block = token_rows(tokens, self.batch_size)
        for row, new in zip(self.rows, block):
            row.extend(new)
        return self._step(len(block[0]))

    def truncate(self, length: int) -> None:
        if not 1 <= length <= self.length:
            raise RuntimeAdapterError(f"cannot truncate to {length}: the session holds {self.length} tokens")
        for row in self.rows:
            del row[length:]

    def select(self, rows: Sequence[int]) -> None:
        if not rows or min(rows) < 0 or max(rows) >= self.batch_size:
            raise RuntimeAdapterError(f"select() rows {list(rows)} out of range for batch {self.batch_size}")
        self.rows = [list(self.rows[i]) for i in rows]

    def fork(self) -> VLLMSession:
        twin = VLLMSession.__new__(VLLMSession)
        twin.__dict__.update(self.__dict__)
        twin.rows = [list(r) for r in self.rows]
        return twin
