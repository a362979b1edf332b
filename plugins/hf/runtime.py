"""transformers as a registered runtime (``--runtime hf``): what ``anydecode run``, ``bench`` and ``conformance``
use to load a model, encode prompts, open decode contexts and run transformers' own decoding loops."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from anydecode.algorithms.contracts.decoder import DecodeContext
from anydecode.algorithms.contracts.runtime import Runtime

from .tokenizer import HFTokenizer


@dataclasses.dataclass
class HFModel:
    """A loaded transformers model, its tokenizer and where it came from."""

    model: Any
    tokenizer: Any
    source: str


class _FirstTokenClock:
    """A transformers streamer that notes when the first new token arrives (its first ``put`` is the prompt)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.puts = 0
        self.first: float | None = None

    def put(self, value: Any) -> None:
        self.puts += 1
        if self.puts == 2 and self.first is None:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass

    def prefill_seconds(self) -> float:
        return 0.0 if self.first is None else self.first - self.started


class HFRuntime(Runtime):
    name = "hf"
    description = "Hugging Face transformers (the embedded model dequantised to fp32, a GGUF file or a model folder)"

    def load(self, model: str | None = None, *, progress: Callable[[str], None] | None = None) -> HFModel:
        from transformers.utils import logging as hf_logging

        from anydecode.models import default_gguf_path, load_hf

        hf_logging.disable_progress_bar()  # the CLI shows its own progress
        hf_logging.set_verbosity_error()
        loaded, tokenizer = load_hf(model, progress=progress)
        return HFModel(loaded, tokenizer, str(model or default_gguf_path()))

    def tokenizer(self, handle: HFModel) -> HFTokenizer:
        return HFTokenizer(handle.tokenizer, int(handle.model.get_output_embeddings().weight.shape[0]))

    def encode(self, handle: HFModel, prompt: str, *, chat: bool = False) -> list[int]:
        tok = handle.tokenizer
        if chat:
            ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)["input_ids"]
            return ids[0].tolist()
        return tok(prompt).input_ids

    def open(self, handle: HFModel, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             on_token: Callable[[int, int], None] | None = None) -> DecodeContext:
        from .generate import open_context

        width = max(len(p) for p in prompts)
        pad = handle.tokenizer.pad_token_id
        pad = int(pad) if pad is not None else int(handle.tokenizer.eos_token_id or 0)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left-padded, as transformers batches prompts
            ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
            mask[i, width - len(p):] = 1
        eos = handle.tokenizer.eos_token_id
        with torch.no_grad():
            return open_context(handle.model, ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                eos_token_ids=[] if eos is None else [int(eos)], tokenizer=handle.tokenizer,
                                on_token=on_token)

    def owner(self, handle: HFModel) -> object:
        return handle.model

    def baselines(self, handle: HFModel) -> Mapping[str, Callable[..., tuple[list[int], dict[str, Any]]]]:
        def native(extra: dict[str, Any]) -> Callable[..., tuple[list[int], dict[str, Any]]]:
            def run(prompt: list[int], max_new_tokens: int, sampling: Mapping[str, Any]) -> tuple[list[int], dict]:
                do_sample = float(sampling.get("temperature", 0.0)) > 0
                ids = torch.tensor([prompt], dtype=torch.long)
                clock = _FirstTokenClock()
                with torch.no_grad():
                    out = handle.model.generate(ids, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                                streamer=clock, **(dict(sampling) if do_sample else {}), **extra)
                return out[0, ids.shape[1]:].tolist(), {"prefill_seconds": clock.prefill_seconds()}
            return run

        return {"native-greedy": native({}), "native-prompt-lookup": native({"prompt_lookup_num_tokens": 10}),
                # the model as its own assistant: an upper bound on acceptance
                "native-assisted": native({"assistant_model": handle.model})}
