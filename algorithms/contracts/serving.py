"""The serving trust boundary: which settings a request may give, and the limits on the work it causes.

Two kinds of settings reach a decoder (DESIGN.md, "Who may set what"):

* **operator settings** come from code that runs in the process: the Python API, ``anydecode run``,
  ``anydecode serve --set`` and vLLM's ``--additional-config``. They may name files, Python callables, reward models,
  state files and grammar engines;
* **request settings** come from whoever can reach a server: ``vllm_xargs`` / ``SamplingParams.extra_args`` and the
  body of ``POST /v1/anydecode/completions``. A request may give a setting only when its config field is declared
  with ``request=True`` (or the operator listed it in ``request_allow``), a width only up to its cap, a reward only
  among those the operator enabled, and a grammar only as text of bounded size.

:class:`ServingPolicy` is the operator's side of this: the limits, what is opened to requests, how ASAp's learned
state is shared. :func:`check_request` applies it to one request's settings before any config is built from them,
so a refused setting never reaches a factory (no file is opened, no module imported).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from .config import DecoderConfig
from .errors import ConfigError


class RequestSettingError(ConfigError):
    """A request gave a setting that only the operator may give, or a value past the operator's limit."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """Caps on the work one request can cause; each has an operator override (``anydecode serve --set NAME=V``)."""

    #: bytes of grammar text a request may send
    grammar_bytes: int = 32_768
    #: seconds a grammar may take to compile before the request is refused (HTTP 400)
    grammar_seconds: float = 5.0
    #: automaton states (outlines) or lexer states (llguidance) a grammar may compile to
    grammar_states: int = 50_000
    #: prompts in one ``/v1/anydecode/completions`` request
    prompts: int = 8
    #: samples a best-of-N request may draw per prompt (``num_samples``)
    samples: int = 16
    #: beams, beam groups and returned sequences per prompt (``num_beams``, DeAL's ``beam``, ...)
    beams: int = 16
    #: top-k expansions per state (DeAL's ``k``)
    expansions: int = 16
    #: greedy lookahead tokens (DeAL's ``lookahead``)
    lookahead: int = 32
    #: new tokens per sequence on the anydecode route (``max_tokens``)
    tokens: int = 1024
    #: rows a search may hold at once over all its prompts (prompts x beams x expansions, prompts x samples)
    rows: int = 128
    #: log-probabilities read per row and step on the anydecode route (``top_logprobs``)
    top_logprobs: int = 20
    #: compiled transforms (grammar matchers' shared part, ASAp tries' owner) kept per process, least recently used
    cached_transforms: int = 64
    #: bytes of predicted output (``prediction``) a request may send
    prediction_bytes: int = 262_144

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                raise ConfigError(f"limit {f.name}={value!r} must be a positive number")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Limits:
        kwargs: dict[str, Any] = {}
        for key, raw in values.items():
            if key not in cls.names():
                raise ConfigError(f"unknown limit {key!r}; limits: {', '.join(cls.names())}")
            kind = float if key == "grammar_seconds" else int
            try:
                kwargs[key] = kind(raw) if not isinstance(raw, bool) else None
            except (TypeError, ValueError):
                kwargs[key] = None
            if kwargs[key] is None or (kind is int and isinstance(raw, float) and not raw.is_integer()):
                raise ConfigError(f"limit {key}={raw!r} is not a {'number' if kind is float else 'whole number'}")
        return cls(**kwargs)


ASAP_SCOPES = ("server", "api_key", "request")
PLAIN_REQUESTS = ("sample", "refuse")


@dataclasses.dataclass(frozen=True)
class ServingPolicy:
    """What the operator of a server lets its requests do."""

    limits: Limits = dataclasses.field(default_factory=Limits)
    #: config fields the operator opened to requests beyond those declared ``request=True``
    request_allow: frozenset[str] = frozenset()
    #: rewards a request may name (the operator enables them: ``--set rewards=keywords,length``, or by naming them
    #: in its own ``reward`` setting)
    rewards: frozenset[str] = frozenset()
    #: decoders a request may choose (None: every registered decoder the route can run)
    decoders: frozenset[str] | None = None
    #: who shares ASAp's learned state: the whole server, requests with the same API key, or nobody
    asap_scope: str = "server"
    #: a request without a grammar on a grammar-decoder server: plain sampling, or HTTP 400
    plain_requests: str = "sample"
    #: treat ``SamplingParams.extra_args`` as operator settings: only for an offline ``LLM(...)`` whose requests come
    #: from the operator's own code, never on a server
    trust_extra_args: bool = False

    #: the keys of ``anydecode serve --set`` (and of ``--additional-config``'s ``anydecode.serving`` object) that set
    #: the policy rather than a decoder setting
    KEYS = ("request_allow", "rewards", "decoders", "asap_scope", "plain_requests", "trust_extra_args")

    def __post_init__(self) -> None:
        if self.asap_scope not in ASAP_SCOPES:
            raise ConfigError(f"asap_scope={self.asap_scope!r} is not one of {', '.join(ASAP_SCOPES)}")
        if self.plain_requests not in PLAIN_REQUESTS:
            raise ConfigError(f"plain_requests={self.plain_requests!r} is not one of {', '.join(PLAIN_REQUESTS)}")

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """Every policy key: the policy's own and the limits' names."""
        return cls.KEYS + Limits.names()

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> ServingPolicy:
        """A policy from ``{"rewards": "keywords,length", "beams": 8, ...}`` (lists as lists or comma strings)."""
        values = dict(values or {})
        unknown = sorted(k for k in values if k not in cls.keys())
        if unknown:
            raise ConfigError(f"unknown serving setting {unknown[0]!r}; serving settings: {', '.join(cls.keys())}")
        limits = Limits.from_mapping({k: v for k, v in values.items() if k in Limits.names()})
        decoders = values.get("decoders")
        return cls(
            limits=limits,
            request_allow=frozenset(_names(values.get("request_allow"), "request_allow")),
            rewards=frozenset(_names(values.get("rewards"), "rewards")),
            decoders=None if decoders in (None, "", "*") else frozenset(_names(decoders, "decoders")),
            asap_scope=str(values.get("asap_scope", "server")),
            plain_requests=str(values.get("plain_requests", "sample")),
            trust_extra_args=_flag(values.get("trust_extra_args", False), "trust_extra_args"),
        )

    def as_mapping(self) -> dict[str, Any]:
        """The JSON form ``from_mapping`` reads (for ``--additional-config``)."""
        out: dict[str, Any] = dataclasses.asdict(self.limits)
        out.update(request_allow=sorted(self.request_allow), rewards=sorted(self.rewards),
                   asap_scope=self.asap_scope, plain_requests=self.plain_requests,
                   trust_extra_args=self.trust_extra_args)
        if self.decoders is not None:
            out["decoders"] = sorted(self.decoders)
        return out

    def with_rewards(self, names: Any) -> ServingPolicy:
        """The policy with more enabled rewards (those the operator named in its own ``reward`` setting)."""
        more = frozenset(_names(names, "reward"))
        return self if more <= self.rewards else dataclasses.replace(self, rewards=self.rewards | more)


def _flag(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return value.strip().lower() in ("1", "true", "yes", "on")
    raise ConfigError(f"{key}={value!r} must be true or false")


def _names(value: Any, key: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple, frozenset, set)) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value if v.strip()]
    raise ConfigError(f"{key}={value!r} must be a list of names or a comma-separated string")


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def check_request(decoder: str, config_cls: type[DecoderConfig], request: Mapping[str, Any],
                  merged: Mapping[str, Any], policy: ServingPolicy, components: Any = None) -> None:
    """Refuse a request's settings that the policy does not allow (RequestSettingError naming the setting).

    ``request`` holds only what the request itself gave; ``merged`` the operator's defaults overlaid with it (the
    settings the config will be built from, which decide the components whose fields count: a speculative
    decoder's drafter, a search decoder's rewards). Unknown names pass here: building the config reports them.
    """
    if policy.decoders is not None and decoder not in policy.decoders:
        raise RequestSettingError(
            f"decoder {decoder!r} is not offered to requests on this server; offered: "
            f"{', '.join(sorted(policy.decoders)) or 'none'} (the operator chooses them with "
            "`anydecode serve --set decoders=...`)")
    fields = config_cls.setting_fields(merged, components)
    allowed = sorted(n for n, f in fields.items() if f.metadata.get("request") or n in policy.request_allow)
    for key, value in request.items():
        if key == "decoder":
            continue
        field = fields.get(key)
        if field is None:
            continue
        if not field.metadata.get("request") and key not in policy.request_allow:
            raise RequestSettingError(
                f"setting {key!r} of decoder {decoder!r} is an operator setting: a request may not set it. The "
                f"operator sets it (`anydecode serve --set {key}=...` or --additional-config), or opens it to "
                f"requests with `anydecode serve --set request_allow={key}`. Requests may set: "
                f"{', '.join(allowed) or 'nothing'}")
        cap = field.metadata.get("cap")
        if cap is not None:
            bound = getattr(policy.limits, cap)
            number = _as_number(value)
            if number is not None and number > bound:
                raise RequestSettingError(
                    f"setting {key}={value!r} is over this server's limit: at most {bound} ({cap}); the operator "
                    f"raises it with `anydecode serve --set {cap}=N`")
    if "reward" in request:
        names = _names(request["reward"], "reward")
        refused = [n for n in names if n not in policy.rewards]
        if refused:
            raise RequestSettingError(
                f"reward {refused[0]!r} is not enabled on this server; a request may name only the rewards the "
                f"operator enabled: {', '.join(sorted(policy.rewards)) or 'none'} (`anydecode serve --set "
                f"rewards=NAME,...`)")
    grammar = request.get("grammar")
    if grammar is not None:
        if not isinstance(grammar, str):
            raise RequestSettingError(f"grammar must be grammar text, got {type(grammar).__name__}")
        size = len(grammar.encode("utf-8", errors="replace"))
        if size > policy.limits.grammar_bytes:
            raise RequestSettingError(
                f"grammar of {size} bytes is over this server's limit of {policy.limits.grammar_bytes} bytes "
                "(grammar_bytes)")
