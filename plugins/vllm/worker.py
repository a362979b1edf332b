"""A vLLM worker extension exposing anydecode's per-request state counts to ``collective_rpc``.

``anydecode serve`` adds ``--worker-extension-cls anydecode.plugins.vllm.worker.AnydecodeWorkerExtension``; with
``VLLM_SERVER_DEV_MODE=1`` the count is readable over HTTP:
``POST /collective_rpc {"method": "anydecode_live_rows"}``.
"""

from __future__ import annotations


class AnydecodeWorkerExtension:
    """Mixed into vLLM's worker class by vLLM itself."""

    def anydecode_live_rows(self) -> int:
        """Requests that currently hold anydecode state in this worker."""
        from .processor import live_rows

        return live_rows()
