"""A vLLM worker extension exposing anydecode's worker-side state to ``collective_rpc``.

``anydecode serve`` adds ``--worker-extension-cls anydecode.plugins.vllm.worker.AnydecodeWorkerExtension``; with
``VLLM_SERVER_DEV_MODE=1`` the methods are reachable over HTTP, e.g.
``POST /collective_rpc {"method": "anydecode_live_rows"}``; offline, ``llm.collective_rpc("anydecode_proposer_stats")``.
The API process reaches them through the engine client's ``collective_rpc`` whatever the dev mode: anydecode's
endpoint plugin attaches the proposer to the model runner (``anydecode_attach_batch``) and its request gate reads
each predicted-output request's counts (``anydecode_prediction_usage``).
"""

from __future__ import annotations

from typing import Any


class AnydecodeWorkerExtension:
    """Mixed into vLLM's worker class by vLLM itself."""

    def anydecode_live_rows(self) -> int:
        """Requests that currently hold anydecode logits-processor state in this worker."""
        from .processor import live_rows

        return live_rows()

    def anydecode_stats(self) -> dict[str, Any]:
        """The logits processors' counters in this worker: requests by finish reason, live rows, cached transforms."""
        from .processor import worker_stats

        return worker_stats()

    def _anydecode_proposer(self) -> Any:
        from .proposer import AnydecodeProposer

        drafter = getattr(getattr(self, "model_runner", None), "drafter", None)
        if not isinstance(drafter, AnydecodeProposer):
            raise RuntimeError("this engine does not run an anydecode speculative proposer "
                               f"(its drafter is {type(drafter).__name__})")
        return drafter

    def anydecode_proposer_stats(self) -> dict[str, Any]:
        """The anydecode proposer's counters in this worker (requests seen, drafted and accepted tokens)."""
        return self._anydecode_proposer().stats()

    def anydecode_set_drafter(self, name: str | None, settings: dict[str, Any] | None = None) -> str | None:
        """Switch the anydecode proposer to another registered drafter (None: no drafts) from the next step."""
        self._anydecode_proposer().set_drafter(name, settings)
        return name

    def anydecode_attach_batch(self) -> dict[str, Any]:
        """Hand the anydecode proposer this worker's model runner, so that it finds each batch row's request by
        its vLLM request id and drafts from the request's prediction (``anydecode serve``'s endpoint plugin calls
        this once the engine is up). Returns whether predictions are served, or why not."""
        try:
            proposer = self._anydecode_proposer()
            proposer.attach(getattr(self, "model_runner", None))
        except Exception as exc:
            return {"attached": False, "predictions": False, "reason": f"{type(exc).__name__}: {exc}"}
        reason = None if proposer.predictions else (
            f"drafter {proposer.name!r} does not draft from predictions (iad and suffix do)")
        return {"attached": True, "predictions": proposer.predictions, "reason": reason}

    def anydecode_prediction_usage(self, key: str) -> dict[str, int] | None:
        """The accepted and rejected prediction tokens of the request whose prediction key is ``key`` (the request
        gate's; read once, then forgotten); None when this worker has none."""
        return self._anydecode_proposer().prediction_usage(str(key))
