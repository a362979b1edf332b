"""Sampling two-token continuations through a real runtime, and their exact targets from its own logits."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from anydecode.algorithms.contracts.config import SamplingConfig

from .reference import planted_top_p_before_temperature, target_distribution


class RuntimeSampler:
    """The embedded model in ``llamacpp`` or ``hf``, driven through anydecode's own entry points."""

    def __init__(self, runtime: str, model: Any = None, tokenizer: Any = None):
        self.runtime = runtime
        if runtime == "llamacpp":
            from anydecode.plugins.llamacpp import load_default

            self.llm = model or load_default()
        elif runtime == "hf":
            from anydecode.plugins.hf import load_default

            if model is None:
                model, tokenizer = load_default()
            self.model, self.tokenizer = model, tokenizer
        else:
            raise ValueError(f"unknown runtime {runtime!r}; statistical checks run on llamacpp or hf")

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.close()

    # -- logits along the same path the sampler takes ---------------------------------------------------------------
    def _logits_llamacpp(self, prompt: str, first: int | None) -> np.ndarray:
        from anydecode.plugins.llamacpp.session import LlamaSession
        from anydecode.plugins.llamacpp.text import prompt_ids

        session = LlamaSession(self.llm)
        logits = session.start(prompt_ids(self.llm, prompt))
        if first is not None:
            logits = session.append([[first]])[:, -1]
        return logits[0].double().numpy()

    def _logits_hf(self, prompt: str, first: int | None) -> np.ndarray:
        from anydecode.plugins.hf import HFSession

        ids = self.tokenizer(prompt, return_tensors="pt").input_ids
        session = HFSession(self.model, [self.tokenizer.eos_token_id])
        logits = session.start(ids)
        if first is not None:
            logits = session.append([[first]])[:, -1]
        return logits[0].double().numpy()

    def logits(self, prompt: str, first: int | None = None) -> np.ndarray:
        return self._logits_llamacpp(prompt, first) if self.runtime == "llamacpp" else self._logits_hf(prompt, first)

    def two_token_targets(self, prompt: str, kwargs: dict[str, Any]) -> tuple[dict, dict]:
        """Exact distributions over (t1, t2) of the target and of the planted bug."""
        out = []
        for fn in (target_distribution, planted_top_p_before_temperature):
            p1 = fn(self.logits(prompt), **kwargs)
            dist = {}
            for t1 in np.nonzero(p1 > 0)[0]:
                p2 = fn(self.logits(prompt, int(t1)), **kwargs)
                for t2 in np.nonzero(p2 > 0)[0]:
                    dist[(int(t1), int(t2))] = float(p1[t1] * p2[t2])
            out.append(dist)
        return out[0], out[1]

    # -- draws -----------------------------------------------------------------------------------------------------
    def draw(self, prompt: str, kwargs: dict[str, Any], n: int, progress: bool = False) -> list[tuple[int, int]]:
        samples: list[tuple[int, int]] = []
        if self.runtime == "llamacpp":
            from anydecode.plugins.llamacpp import generate

            for i in range(n):
                out = generate(self.llm, prompt, decoder="sample", max_new_tokens=2, seed=i, **kwargs)
                samples.append(tuple(out.token_ids[:2]))
        else:
            from anydecode.algorithms.sampling.decoders import SAMPLE
            from anydecode.plugins.hf import run_decoder

            ids = self.tokenizer(prompt, return_tensors="pt").input_ids
            batch = 128
            for start in range(0, n, batch):
                rows = min(batch, n - start)
                config = SamplingConfig(seed=start, **kwargs)
                with torch.no_grad():
                    result, _ = run_decoder(self.model, ids.repeat(rows, 1), SAMPLE, config, max_new_tokens=2,
                                            eos_token_ids=[self.tokenizer.eos_token_id])
                samples.extend(tuple(s[:2]) for s in result.sequences)
        return samples
