"""vLLM as a registered runtime (``--runtime vllm``): an offline ``LLM`` engine in this process, each decode step one
engine step (log-probabilities of every row), the way ``anydecode.plugins.vllm.generate`` drives it."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from anydecode.algorithms.contracts.decoder import DecodeContext
from anydecode.algorithms.contracts.runtime import Runtime

#: engine settings for the embedded model on a CPU machine (the environment may override the KV cache size)
ENGINE_DEFAULTS = {"dtype": "float32", "max_model_len": 2048, "enforce_eager": True, "max_logprobs": 20,
                   "enable_prefix_caching": True}


class VLLMRuntime(Runtime):
    name = "vllm"
    description = "vLLM (an offline LLM engine in this process; the embedded model's safetensors copy by default)"

    def load(self, model: str | None = None, *, progress: Callable[[str], None] | None = None) -> Any:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        from vllm import LLM

        if model is None:
            from anydecode.models import ensure_hf_copy

            model = str(ensure_hf_copy(progress=progress))
        if progress:
            progress("starting the vLLM engine")
        return LLM(model=model, **ENGINE_DEFAULTS)

    def close(self, handle: Any) -> None:
        engine = getattr(handle, "llm_engine", None)
        shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
        if shutdown is not None:
            shutdown()

    def tokenizer(self, handle: Any) -> Any:
        from anydecode.plugins.hf.tokenizer import HFTokenizer

        return HFTokenizer(handle.get_tokenizer(), int(handle.llm_engine.model_config.get_vocab_size()))

    def encode(self, handle: Any, prompt: str, *, chat: bool = False) -> list[int]:
        tok = handle.get_tokenizer()
        if chat:
            return list(tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                tokenize=True))
        return list(tok.encode(prompt))

    def open(self, handle: Any, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             on_token: Callable[[int, int], None] | None = None) -> DecodeContext:
        from .offline import open_context
        from .session import offline_step

        ctx = open_context(handle.llm_engine.model_config, offline_step(handle), handle.get_tokenizer(), prompts,
                           max_new_tokens=max_new_tokens, owner=handle)
        ctx.on_token = on_token
        return ctx

    def baselines(self, handle: Any) -> Mapping[str, Callable[..., tuple[list[int], dict[str, Any]]]]:
        def native(prompt: list[int], max_new_tokens: int, sampling: Mapping[str, Any]) -> tuple[list[int], dict]:
            from vllm import SamplingParams
            from vllm.inputs import TokensPrompt

            params = SamplingParams(max_tokens=max_new_tokens, temperature=float(sampling.get("temperature", 0.0)),
                                    top_p=float(sampling.get("top_p", 1.0)), top_k=int(sampling.get("top_k", 0)) or -1,
                                    min_p=float(sampling.get("min_p", 0.0)))
            out = handle.generate([TokensPrompt(prompt_token_ids=prompt)], params, use_tqdm=False)[0]
            return list(out.outputs[0].token_ids), {"prefill_seconds": 0.0}

        return {"native-greedy": native}
