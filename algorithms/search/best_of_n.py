"""Best-of-N: draw N samples with the ``sample`` decoder's settings, return the one with the highest reward.

The N samples of a prompt are N rows of one batch run through the shared autoregressive loop with the ``sample``
decoder's own transform and seeded selector, so they are exactly the samples ``sample`` draws with the same
seed for the prompt repeated N times (rows ``p * n .. p * n + n - 1``). Ties in reward (and the no-reward case) are
broken by the model's log-likelihood of the sample, recorded from the raw logits as the loop runs.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import torch

from ..contracts.config import SamplingConfig, config_field
from ..contracts.decoder import DecodeContext, DecodeResult
from ..contracts.transform import ChainTransform, LogitsTransform, TransformState
from ..loop import autoregressive, selector_for
from ..sampling.decoders import SAMPLE
from .rewards import Reward, RewardInput, RewardSettings, checked_scores, decode_text
from .rows import search_session


@dataclasses.dataclass(frozen=True)
class BestOfNConfig(RewardSettings, SamplingConfig):
    """N samples with the sampling settings, the best by reward (ties: log-likelihood)."""

    num_samples: int = config_field(4, ge=1, request=True, cap="samples",
                                    help="samples drawn per prompt (the N of best-of-N)")

    def rows_per_prompt(self) -> int:
        return self.num_samples


class LogLikelihoodRecorder(LogitsTransform):
    """Passes logits through unchanged and sums each row's log-probability of the tokens it generates."""

    def __init__(self) -> None:
        self.states: list[dict[str, Any]] = []

    def start(self, prompt_ids: Sequence[int]) -> TransformState:
        state = {"previous": None, "counted": 0, "loglik": 0.0}
        self.states.append(state)
        return state

    def _account(self, state: TransformState, generated_ids: Sequence[int]) -> None:
        if len(generated_ids) > state["counted"] and state["previous"] is not None:
            state["loglik"] += float(state["previous"][int(generated_ids[-1])])
            state["counted"] = len(generated_ids)

    def apply(self, state: TransformState, generated_ids: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        self._account(state, generated_ids)
        state["previous"] = torch.log_softmax(logits.to(torch.float64), dim=-1)
        return logits

    def finish(self, state: TransformState, generated_ids: Sequence[int], reason: str) -> None:
        self._account(state, generated_ids)
        state["previous"] = None


def sampling_settings(config: BestOfNConfig) -> SamplingConfig:
    return SamplingConfig(temperature=config.temperature, top_k=config.top_k, top_p=config.top_p,
                          min_p=config.min_p, seed=config.seed)


def run_best_of_n(config: BestOfNConfig, ctx: DecodeContext, reward: Reward | None = None) -> DecodeResult:
    """The ``best_of_n`` decoder; ``reward`` defaults to the one ``config`` names (none: highest likelihood)."""
    started = time.perf_counter()
    if reward is None and config.reward:
        reward = config.build_reward()
    n = config.num_samples
    prompts = len(ctx.prompts)
    eos = frozenset(ctx.eos_token_ids)
    sampling = sampling_settings(config)
    with search_session(ctx, prompts * n, "best_of_n") as (session, logits):
        session.select([p for p in range(prompts) for _ in range(n)])
        rows = dataclasses.replace(
            ctx, session=session, prompts=[list(ctx.prompts[p]) for p in range(prompts) for _ in range(n)],
            prompt_logits=logits.repeat_interleave(n, dim=0), on_token=None)
        recorder = LogLikelihoodRecorder()
        transform = ChainTransform([recorder, SAMPLE.transform(sampling, rows)])
        # the runtime's processors and stopping rules apply per prompt: sample r continues prompt r // n
        samples = autoregressive(rows, transform, selector_for(sampling),
                                 prompt_rows=[r // n for r in range(prompts * n)])
    logliks = [s["loglik"] for s in recorder.states]
    rewards = [0.0] * len(samples.sequences)
    if reward is not None:
        items = []
        for r, seq in enumerate(samples.sequences):
            body = [t for t in seq if t not in eos]
            prompt_text = decode_text(ctx.tokenizer, ctx.prompts[r // n])
            items.append(RewardInput(prompt_text, decode_text(ctx.tokenizer, body), tuple(body), True))
        rewards = checked_scores(reward, items)
    out_sequences, out_rows, out_scores, reasons = [], [], [], []
    chosen = []
    for p in range(prompts):
        block = range(p * n, (p + 1) * n)
        best = max(block, key=lambda r: (rewards[r], logliks[r]))
        chosen.append(best - p * n)
        out_sequences.append(samples.sequences[best])
        out_rows.append(p)
        out_scores.append(rewards[best] if reward is not None else logliks[best])
        reasons.append(samples.finish_reasons[best])
    stats = {
        **samples.stats,
        "samples": len(samples.sequences),
        "chosen_sample": chosen,
        "sample_rewards": rewards,
        "sample_logliks": logliks,
        "decode_seconds": time.perf_counter() - started,
    }
    return DecodeResult(sequences=out_sequences, prompt_rows=out_rows, finish_reasons=reasons, scores=out_scores,
                        stats=stats)
