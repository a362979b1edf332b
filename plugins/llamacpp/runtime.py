"""llama.cpp (llama-cpp-python) as a registered runtime (``--runtime llamacpp``, the CLI's default): load a GGUF
model, encode prompts, open decode contexts, and run llama-cpp-python's own loops as benchmark baselines."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from anydecode.algorithms.contracts.decoder import DecodeContext
from anydecode.algorithms.contracts.runtime import Runtime

from ._runtime import import_llama_cpp
from .multiseq import MultiSequenceSession, multi_session_factory
from .session import LlamaSession
from .text import LlamaTokenizer, prompt_ids


def default_threads() -> int:
    """The CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def load_default(n_ctx: int = 4096, n_threads: int | None = None, **kwargs: Any) -> Any:
    """A ``Llama`` on the embedded default model (quiet, CPU), decoding on every core this process may use.

    llama-cpp-python's own default is half the cores for one-token steps (``n_threads``) and all of them for
    batches (``n_threads_batch``), which runs a baseline's one-token steps on fewer cores than a speculative
    decoder's blocks; both get every core here (see docs/runtimes/llamacpp.md).

    Flash attention is on by default: with it, llama.cpp's CPU attention treats every query row of a block the same
    way as a one-token step, so a block forward (speculative verification) gives exactly the logits of one-token
    forwards and greedy speculation is identical to greedy decoding. Without it a block takes another attention
    path whose logits differ slightly (docs/runtimes/llamacpp-numerics.md).
    """
    from anydecode.models import check_gguf, default_gguf_path

    llama_cpp = import_llama_cpp()
    path = kwargs.pop("model_path", None)
    path = check_gguf(path) if path else default_gguf_path()
    threads = n_threads or default_threads()
    kwargs.setdefault("n_threads_batch", threads)
    kwargs.setdefault("flash_attn", True)
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads,
                           verbose=kwargs.pop("verbose", False), **kwargs)


def open_context(llm: Any, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                 on_token: Callable[[int, int], None] | None = None, draft_model: Any = None) -> DecodeContext:
    """Prefill ``prompts`` (one: the Llama's own context; several: a multi-sequence context) and give the context.

    ``max_new_tokens`` is cut to what the context holds: a full context ends with ``finish_reason="length"``.
    """
    prompts = [list(p) for p in prompts]
    started = time.perf_counter()
    if len(prompts) == 1:
        session: Any = LlamaSession(llm)
        logits = session.start(prompts[0])
        room = session.capacity - len(prompts[0])
    else:  # num_return_sequences rows side by side, as transformers runs them
        longest = max(len(p) for p in prompts)
        cells = sum(len(p) for p in prompts) + len(prompts) * (max_new_tokens + 1)
        session = MultiSequenceSession(llm, len(prompts), max(256, -(-cells // 256) * 256))
        logits = session.start(prompts)
        room = session.n_ctx - longest
    prefill = time.perf_counter() - started
    draft = None
    if draft_model is not None:
        draft = LlamaSession(draft_model)
        draft.start(prompts[0])
    tokenizer = LlamaTokenizer(llm)
    limit = max(0, min(max_new_tokens, room - 1))
    return DecodeContext(
        vocab_size=int(llm.n_vocab()),
        eos_token_ids=frozenset({int(llm.token_eos())}),
        tokenizer=tokenizer,
        runtime="llamacpp",
        session=session,
        prompts=prompts,
        prompt_logits=logits,
        max_new_tokens=limit,
        on_token=on_token,
        owner=llm,
        draft_session=draft,
        # search decoders (beam, dbs, deal, best_of_n) run their rows in a second, multi-sequence context
        open_rows=multi_session_factory(llm, prompts, limit),
        prefill_seconds=prefill,
    )


class LlamaCppRuntime(Runtime):
    name = "llamacpp"
    description = "llama.cpp through llama-cpp-python (a GGUF file; the embedded model by default), local CPU"
    #: one llama_decode holds a token of every row: as narrow as a single sequence's widest exact block
    exact_rows = LlamaSession.max_block

    def load(self, model: str | None = None, *, progress: Callable[[str], None] | None = None) -> Any:
        from anydecode.models import check_gguf, default_gguf_path

        path = check_gguf(model) if model else default_gguf_path()
        if progress:
            progress(f"loading {path.name}")
        return load_default(model_path=str(path))

    def load_for(self, model: str | None, decoders: Sequence[Any], *,
                 progress: Callable[[str], None] | None = None) -> Any:
        """Flash attention where a decoder verifies blocks (speculative decoders: block logits then equal one-token
        logits, so greedy speculation is exact); llama.cpp's default attention otherwise, whose one-token steps are
        faster on a CPU (docs/runtimes/llamacpp-numerics.md)."""
        from anydecode.models import check_gguf, default_gguf_path

        path = check_gguf(model) if model else default_gguf_path()
        if progress:
            progress(f"loading {path.name}")
        return load_default(model_path=str(path), flash_attn=any(verifies_blocks(d) for d in decoders))

    def close(self, handle: Any) -> None:
        handle.close()

    def reset(self, handle: Any) -> None:
        handle.reset()

    def tokenizer(self, handle: Any) -> LlamaTokenizer:
        return LlamaTokenizer(handle)

    def encode(self, handle: Any, prompt: str, *, chat: bool = False) -> list[int]:
        return prompt_ids(handle, prompt, chat=chat)

    def open(self, handle: Any, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             on_token: Callable[[int, int], None] | None = None) -> DecodeContext:
        return open_context(handle, prompts, max_new_tokens=max_new_tokens, on_token=on_token)

    def baselines(self, handle: Any) -> Mapping[str, Callable[..., tuple[list[int], dict[str, Any]]]]:
        def native(target: Any) -> Callable[..., tuple[list[int], dict[str, Any]]]:
            def run(prompt: list[int], max_new_tokens: int, sampling: Mapping[str, Any]) -> tuple[list[int], dict]:
                temp = float(sampling.get("temperature", 0.0))
                target.reset()
                out: list[int] = []
                started = time.perf_counter()
                prefill = None
                gen = target.generate(prompt, temp=temp, top_k=int(sampling.get("top_k", 0)) if temp else 1,
                                      top_p=float(sampling.get("top_p", 1.0)),
                                      min_p=float(sampling.get("min_p", 0.0)), repeat_penalty=1.0, reset=True)
                for token in gen:
                    if prefill is None:  # the prompt's forward pass and the first token's selection
                        prefill = time.perf_counter() - started
                    out.append(int(token))
                    if token == target.token_eos() or len(out) >= max_new_tokens:
                        break
                return out, {"prefill_seconds": prefill or 0.0}
            return run

        def prompt_lookup(prompt: list[int], max_new_tokens: int, sampling: Mapping[str, Any]) -> tuple[list, dict]:
            if "lookup" not in lookups:
                import llama_cpp
                from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

                lookups["lookup"] = llama_cpp.Llama(
                    model_path=handle.model_path, n_ctx=handle.n_ctx(), verbose=False,
                    n_threads=handle.context_params.n_threads, n_threads_batch=handle.context_params.n_threads_batch,
                    flash_attn=flash_attention(handle),
                    draft_model=LlamaPromptLookupDecoding(num_pred_tokens=10))
            return native(lookups["lookup"])(prompt, max_new_tokens, sampling)

        def plain(prompt: list[int], max_new_tokens: int, sampling: Mapping[str, Any]) -> tuple[list, dict]:
            # llama.cpp's own loop with its default attention (faster one-token steps), on a second Llama when
            # this one has flash attention on for speculation
            if not flash_attention(handle):
                return native(handle)(prompt, max_new_tokens, sampling)
            if "plain" not in lookups:
                lookups["plain"] = load_default(model_path=handle.model_path, n_ctx=handle.n_ctx(),
                                                n_threads=handle.context_params.n_threads, flash_attn=False)
            return native(lookups["plain"])(prompt, max_new_tokens, sampling)

        lookups: dict[str, Any] = {}
        # native-greedy: the loaded Llama's own loop (the exact reference of greedy identity);
        # native-greedy-default: llama.cpp's loop with its default attention (the fastest plain generation)
        return {"native-greedy": native(handle), "native-greedy-default": plain, "native-prompt-lookup": prompt_lookup}

    def greedy_parting_gap(self, handle: Any) -> float:
        """Twice the largest logit difference between one block forward as wide as speculation feeds
        (``LlamaSession.max_block``) and one-token forwards over the same tokens, measured on this model and
        machine (0 with flash attention on, llama.cpp's CPU default here)."""
        gap = _PARTING_GAPS.get(id(handle))
        if gap is None:
            gap = _PARTING_GAPS[id(handle)] = 2.0 * block_logit_difference(handle)
        return gap


def flash_attention(llm: Any) -> bool:
    """Whether the Llama's context runs flash attention."""
    import llama_cpp

    return bool(llm.context_params.flash_attn_type == llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED)


def verifies_blocks(decoder: Any) -> bool:
    """Whether a decoder feeds blocks of draft tokens and claims greedy identity (the speculative decoders)."""
    return getattr(decoder, "claim", None) == "lossless"


#: greedy_parting_gap per loaded Llama (by id: measured once per model load)
_PARTING_GAPS: dict[int, float] = {}


def block_logit_difference(llm: Any, text: str = "The quick brown fox jumps over the lazy dog. It was",
                           n: int = LlamaSession.max_block) -> float:
    """The largest absolute difference between the logits of ``n`` tokens fed as one block and fed one at a time
    (the greedy continuation of ``text``); resets the Llama's context."""
    import numpy as np

    prompt = llm.tokenize(text.encode(), add_bos=True)
    llm.reset()
    session = LlamaSession(llm)
    rows = [session.start(prompt)[-1].float().numpy()]
    tokens: list[int] = []
    for _ in range(n):
        tokens.append(int(rows[-1].argmax()))
        rows.append(session.step([tokens[-1]])[-1].float().numpy())
    session.truncate(len(prompt))
    together = session.append([tokens])[0].float().numpy()
    llm.reset()
    return float(np.abs(together - np.stack(rows[1:])).max())
