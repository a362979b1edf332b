"""Sampling two-token continuations through a registered runtime, and their exact targets from its own logits."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .reference import planted_top_p_before_temperature, target_distribution


class RuntimeSampler:
    """A runtime's default model, driven through the runtime-adapter contract (``anydecode.Runtime``)."""

    #: rows decoded side by side per draw call
    batch = 64

    def __init__(self, runtime: Any, handle: Any = None):
        if isinstance(runtime, str):
            from anydecode.registry import get_registry

            runtime = get_registry().runtime(runtime)
        self.runtime = runtime
        self.handle = handle if handle is not None else runtime.load(None)
        self._own = handle is None

    def close(self) -> None:
        if self._own:
            self.runtime.close(self.handle)

    @property
    def eos(self) -> int | None:
        return self.runtime.tokenizer(self.handle).eos_token_id

    def logits(self, prompt: str, first: int | None = None) -> np.ndarray:
        """The model's next-token logits after ``prompt`` (and ``first``), the path the sampler takes."""
        ids = self.runtime.encode(self.handle, prompt)
        self.runtime.reset(self.handle)
        ctx = self.runtime.open(self.handle, [ids], max_new_tokens=2)
        logits = ctx.prompt_logits
        assert logits is not None and ctx.session is not None
        if first is not None:
            logits = ctx.session.append([[first]])[:, -1]
        return logits[0].double().numpy()

    def two_token_targets(self, prompt: str, kwargs: dict[str, Any]) -> tuple[dict, dict]:
        """Exact distributions over (t1, t2) of the target and of the planted bug (``(t1,)`` when t1 ends it)."""
        eos = self.eos
        out = []
        for fn in (target_distribution, planted_top_p_before_temperature):
            p1 = fn(self.logits(prompt), **kwargs)
            dist = {}
            for t1 in np.nonzero(p1 > 0)[0]:
                if int(t1) == eos:
                    dist[(int(t1),)] = float(p1[t1])
                    continue
                p2 = fn(self.logits(prompt, int(t1)), **kwargs)
                for t2 in np.nonzero(p2 > 0)[0]:
                    dist[(int(t1), int(t2))] = float(p1[t1] * p2[t2])
            out.append(dist)
        return out[0], out[1]

    def draw(self, prompt: str, kwargs: dict[str, Any], n: int, progress: bool = False,
             decoder: str = "sample") -> list[tuple[int, ...]]:
        """``n`` two-token samples of ``decoder`` (rows of one seeded batch per call)."""
        from anydecode.algorithms.generation import generate_on
        from anydecode.registry import get_decoder

        dec = get_decoder(decoder)
        ids = self.runtime.encode(self.handle, prompt)
        samples: list[tuple[int, ...]] = []
        for start in range(0, n, self.batch):
            rows = min(self.batch, n - start)
            config = dec.configure({**kwargs, "seed": start})
            self.runtime.reset(self.handle)
            with torch.no_grad():
                out = generate_on(self.runtime, self.handle, [ids] * rows, dec, config, max_new_tokens=2)
            samples.extend(tuple(s.token_ids[:2]) for s in out.sequences)
        return samples
