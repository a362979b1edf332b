"""Which request each row of vLLM's input batch holds, read from vLLM's model runner (for anydecode's proposers).

vLLM calls a ``custom_class`` proposer with arrays only (``propose(sampled_token_ids, num_tokens_no_spec,
token_ids_cpu)``). Its model runner knows more, and the worker extension hands the proposer the runner
(``anydecode_attach_batch``, which ``anydecode serve``'s endpoint plugin calls through ``collective_rpc`` when the
server starts). In vLLM 0.32's ``GPUModelRunner`` (which the CPU runner inherits):

* ``runner.input_batch.req_ids[row]`` is the request id of row ``row`` of ``token_ids_cpu`` and
  ``num_tokens_no_spec``: ``propose_draft_token_ids`` passes ``self.input_batch.token_ids_cpu`` to the proposer, and
  ``_copy_draft_token_ids_to_cpu`` labels the drafts with ``self.input_batch.req_ids``;
* ``runner.requests[req_id]`` (a ``CachedRequestState``) holds the request's ``sampling_params``, whose
  ``extra_args`` carry what the API process put in ``vllm_xargs`` (the request gate's prediction ids and key);
* a request stays in ``runner.requests`` from its first scheduled step until ``_update_states`` pops it with the
  scheduler's ``finished_req_ids`` (finished or aborted); a preempted request stays.

These are private attributes: :func:`check_runner` refuses a runner without them, the proposers refuse vLLM releases
other than the tested one (``proposer.check_vllm_version``), and ``tests/unit/test_vllm_prediction.py`` fails when
vLLM's source stops doing what is listed above.
"""

from __future__ import annotations

import logging
from collections.abc import Container, Sequence
from typing import Any

import numpy as np

from anydecode.algorithms.contracts.errors import RuntimeAdapterError

from .drafts import RowRequest
from .prediction import XARG_IDS, XARG_KEY

logger = logging.getLogger("anydecode.vllm")

#: vLLM's sampling epsilon: a temperature below it is greedy (``vllm.sampling_params._SAMPLING_EPS``)
GREEDY_BELOW = 1e-5
#: the longest prediction key accepted from ``extra_args`` (the request gate writes 32 hex digits)
MAX_KEY = 64


def check_runner(runner: Any) -> None:
    """RuntimeAdapterError unless ``runner`` has the attributes :class:`RunnerRequests` reads."""
    batch = getattr(runner, "input_batch", None)
    missing = [name for name, ok in (
        ("input_batch", batch is not None),
        ("input_batch.req_ids", batch is not None and isinstance(getattr(batch, "req_ids", None), list)),
        ("requests", isinstance(getattr(runner, "requests", None), dict)),
    ) if not ok]
    if missing:
        raise RuntimeAdapterError(
            f"vLLM's model runner ({type(runner).__name__}) lacks {', '.join(missing)}: anydecode reads each batch "
            "row's request id there (tested with vLLM 0.32); predictions cannot be served on this vLLM")


class RunnerRequests:
    """:class:`~.drafts.BatchRequests` over vLLM's model runner: request ids by row, each request's prediction."""

    def __init__(self, runner: Any, vocab_size: int, max_prediction_tokens: int):
        check_runner(runner)
        self.runner = runner
        self.vocab_size = int(vocab_size)
        self.max_prediction_tokens = int(max_prediction_tokens)
        #: predictions found unusable in the worker (not token ids of this vocabulary, or too many)
        self.refused = 0

    def request_ids(self) -> Sequence[str | None]:
        return self.runner.input_batch.req_ids

    def live(self) -> Container[str]:
        return self.runner.requests

    def request(self, request_id: str) -> RowRequest:
        state = self.runner.requests.get(request_id)
        params = getattr(state, "sampling_params", None)
        extra = getattr(params, "extra_args", None) or {}
        greedy = float(getattr(params, "temperature", 0.0) or 0.0) < GREEDY_BELOW
        key = extra.get(XARG_KEY)
        if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY:
            key = None
        return RowRequest(request_id, self._prediction(extra.get(XARG_IDS), request_id), key, greedy)

    def _prediction(self, ids: Any, request_id: str) -> list[int] | None:
        """The prediction's token ids, checked again here: the request gate wrote them, but a route the gate does
        not guard could carry the key too; ids that do not fit this vocabulary would break the engine."""
        if ids is None:
            return None
        array: np.ndarray | None = None
        if isinstance(ids, list) and 0 < len(ids) <= self.max_prediction_tokens:
            try:  # one pass in numpy: a prediction may hold a quarter of a million ids, checked inside the engine step
                array = np.asarray(ids)
            except (TypeError, ValueError):
                array = None
        if array is None or array.ndim != 1 or array.dtype.kind != "i" or int(array.min()) < 0 \
                or int(array.max()) >= self.vocab_size:
            self.refused += 1
            logger.warning("anydecode: request %s carries a prediction that is not token ids of this model (or is "
                           "over the prediction_bytes limit); it drafts without it", request_id)
            return None
        return array.tolist()
