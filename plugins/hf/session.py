"""Model session over a transformers causal LM: a DynamicCache that grows, is cropped and reordered.

Rows may start left-padded (as transformers batches them); the session keeps the attention mask and each row's
next position, so cores never see padding. ``truncate`` crops the cache (``crop(-n)``, the form every 5.x
release accepts), ``select`` reorders it for beam search, ``fork`` deep-copies it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from anydecode.algorithms.contracts.errors import RuntimeAdapterError
from anydecode.algorithms.contracts.session import ModelSession, as_token_block, tree_depths
from anydecode.kernels import cpu_linear

from ._runtime import cache_keyword, import_transformers, output_cache


class HFSession(ModelSession):
    """A batch of sequences in a transformers model; ``start`` prefills the prompts and returns their logits."""

    def __init__(self, model: Any, eos_token_ids: Sequence[int] = (), *, fast_linear: bool | None = None):
        self.model = model
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.eos_token_ids = frozenset(int(t) for t in eos_token_ids)
        self._cache_kw = cache_keyword(model)
        self._cache: Any = None
        self._ids = torch.empty(0, 0, dtype=torch.long)
        self._mask: torch.Tensor | None = None  # (B, length) 1 = real token; None when there is no padding
        self.forward_passes = 0
        self.device = next(model.parameters()).device
        positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        self.capacity = int(positions) if isinstance(positions, int) and positions > 0 else None
        # on CPU, fp32 linear layers run through oneDNN (kernels/cpu_linear.py), which verifies a block of tokens
        # at little more than one token's cost; None = wherever it is available, False = transformers' own path
        self.fast_linear = fast_linear is not False and self.device.type == "cpu" and cpu_linear.available()
        if fast_linear and not self.fast_linear:
            raise RuntimeAdapterError(
                f"fast_linear=True needs a CPU model, x86-64 and PyTorch {' or '.join(cpu_linear.TESTED_TORCH)} "
                f"(this is {self.device.type}, PyTorch {torch.__version__})")
        self._linears = cpu_linear.linear_modules(model) if self.fast_linear else []
        # the draft controller's prior (c0, c1[, cb]) in units of a one-token forward: on a CPU a forward is mostly
        # fixed cost (docs/benchmarks.md, "The CPU kernel's forward costs"); on a GPU almost entirely so
        self.forward_cost = ((0.97, 0.03, 0.06) if self.fast_linear else (1.0, 0.02)) if self.device.type == "cpu" \
            else (1.0, 0.002)

    # -- state ---------------------------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return int(self._ids.shape[0])

    @property
    def length(self) -> int:
        return int(self._ids.shape[1])

    def tokens(self, row: int = 0) -> list[int]:
        ids = self._ids[row]
        if self._mask is not None:
            ids = ids[self._mask[row].bool()]
        return ids.tolist()

    @property
    def input_ids(self) -> torch.Tensor:
        """All rows, padding included, shape ``(batch, length)``."""
        return self._ids

    # -- forward -------------------------------------------------------------------------------------------------
    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Prefill ``input_ids`` (left-padded where ``attention_mask`` is 0); logits after each row ``(B, V)``."""
        transformers = import_transformers()
        input_ids = input_ids.to(self.device)
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise RuntimeAdapterError(f"expected prompt ids of shape (batch, length>0), got {tuple(input_ids.shape)}")
        if attention_mask is not None and bool((attention_mask == 1).all()):
            attention_mask = None
        self._ids = input_ids
        self._mask = None if attention_mask is None else attention_mask.to(self.device).long()
        self._cache = transformers.DynamicCache(config=self.model.config)
        return self._forward(input_ids, 0)[:, -1]

    def _positions(self, start: int, k: int) -> torch.Tensor:
        if self._mask is None:
            return torch.arange(start, start + k, device=self.device).unsqueeze(0).expand(self.batch_size, k)
        pos = self._mask.cumsum(-1) - 1
        return pos[:, start: start + k].clamp_min(0)

    def _forward(self, block: torch.Tensor, start: int) -> torch.Tensor:
        k = block.shape[1]
        kwargs = {
            "input_ids": block,
            "attention_mask": self._mask,
            "use_cache": True,
            self._cache_kw: self._cache,
            "logits_to_keep": k if start > 0 else 1,
        }
        if self._mask is not None:
            kwargs["position_ids"] = self._positions(start, k)
        out = self._call(kwargs)
        return out.logits.float()

    def _call(self, kwargs: dict[str, Any]) -> Any:
        with torch.no_grad(), cpu_linear.fast_linear(self.model, self.fast_linear, self._linears):
            out = self.model(**kwargs)
        self._cache = output_cache(out)
        self.forward_passes += 1
        return out

    def append(self, tokens: torch.Tensor | Sequence[Sequence[int]]) -> torch.Tensor:
        block = as_token_block(tokens, self.batch_size).to(self.device)
        start = self.length
        self._ids = torch.cat([self._ids, block], dim=1)
        if self._mask is not None:
            self._mask = torch.cat([self._mask, torch.ones_like(block)], dim=1)
        return self._forward(block, start)

    def append_tree(self, tokens: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
        """Tree attention through a custom 4D attention mask (transformers uses a 4D mask as given) and explicit
        position ids (each node at its depth)."""
        block = as_token_block(tokens, self.batch_size).to(self.device)
        links = as_token_block(parents, self.batch_size)
        rows, k = block.shape
        if links.shape != block.shape:
            raise RuntimeAdapterError(f"parents {tuple(links.shape)} do not match tokens {tuple(block.shape)}")
        ancestors = torch.zeros(rows, k, k, dtype=torch.bool)
        depth = torch.zeros(rows, k, dtype=torch.long)
        eye = torch.eye(k, dtype=torch.bool)
        for b in range(rows):
            up = links[b].tolist()
            depth[b] = torch.tensor(tree_depths(up), dtype=torch.long)
            for i, p in enumerate(up):
                ancestors[b, i] = eye[i] | (ancestors[b, p] if p >= 0 else False)
        past = self.length
        seen = (torch.ones(rows, past, dtype=torch.bool) if self._mask is None else self._mask.bool().cpu())
        allowed = torch.cat([seen.unsqueeze(1).expand(rows, k, past), ancestors], dim=2).unsqueeze(1)
        dtype = next(self.model.parameters()).dtype
        mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
        base = (torch.full((rows,), past, dtype=torch.long) if self._mask is None
                else self._mask.sum(-1).cpu().long())
        position_ids = (base.unsqueeze(1) + depth - 1).to(self.device)
        self._ids = torch.cat([self._ids, block], dim=1)
        if self._mask is not None:
            self._mask = torch.cat([self._mask, torch.ones_like(block)], dim=1)
        kwargs = {"input_ids": block, "attention_mask": mask.to(self.device), "position_ids": position_ids,
                  "use_cache": True, self._cache_kw: self._cache, "logits_to_keep": k}
        return self._call(kwargs).logits.float()

    def truncate(self, length: int) -> None:
        drop = self.length - length
        if drop < 0 or length < 1:
            raise RuntimeAdapterError(f"cannot truncate to {length}: the session holds {self.length} positions")
        if drop == 0:
            return
        self._cache.crop(-drop)
        self._ids = self._ids[:, :length]
        if self._mask is not None:
            self._mask = self._mask[:, :length]

    def select(self, rows: Sequence[int]) -> None:
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.device)
        if index.numel() == 0:
            raise RuntimeAdapterError("select() needs at least one row")
        if int(index.min()) < 0 or int(index.max()) >= self.batch_size:
            raise RuntimeAdapterError(f"select() rows {list(rows)} out of range for batch {self.batch_size}")
        self._cache.reorder_cache(index)
        self._ids = self._ids.index_select(0, index)
        if self._mask is not None:
            self._mask = self._mask.index_select(0, index)

    def fork(self) -> HFSession:
        twin = copy.copy(self)
        twin._cache = copy.deepcopy(self._cache)
        return twin
