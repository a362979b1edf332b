"""anydecode's settings on a vLLM server: the operator's (``--additional-config``) and each request's.

The ``anydecode`` object of ``--additional-config`` holds the operator's settings: the server's decoder and its
settings (``{"decoder": "asap", "grammar_file": "schema.json", ...}``) and, under ``"serving"``, the
:class:`~anydecode.algorithms.contracts.serving.ServingPolicy` (limits, what requests may set, ASAp's scope).
``anydecode serve --set`` writes both.

A request's own settings arrive in ``vllm_xargs`` / ``SamplingParams.extra_args`` as flat values. They are checked
against the policy before anything is built from them (:func:`plan_request`): a request chooses a decoder, sends
grammar text and sampling settings, widths within the caps, and nothing that names a file, a Python object or an
engine unless the operator allowed it. Keys starting with ``_anydecode`` are set by anydecode's own middleware
and are accepted only with a valid signature.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from typing import Any

from anydecode.algorithms.contracts.config import DecoderConfig
from anydecode.algorithms.contracts.decoder import Decoder
from anydecode.algorithms.contracts.errors import ConfigError, closest
from anydecode.algorithms.contracts.serving import RequestSettingError, ServingPolicy, check_request

CONFIG_KEY = "anydecode"
SERVING_KEY = "serving"
#: the vLLM ``extra_args`` key under which anydecode's middleware passes the request's tenant (signed)
TENANT_KEY = "_anydecode_tenant"
#: set by ``anydecode serve`` for the API-server process (vLLM gives ``validate_params`` no config) and its engine
ENV_SETTINGS = "ANYDECODE_VLLM_SETTINGS"
#: a per-server secret that signs the tenant the middleware derives from the request's API key
ENV_SECRET = "ANYDECODE_SERVING_SECRET"
FLAT = (str, int, float, bool, type(None))


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """The operator's side: default decoder settings and the serving policy."""

    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    policy: ServingPolicy = dataclasses.field(default_factory=ServingPolicy)

    @property
    def decoder(self) -> str | None:
        name = self.defaults.get("decoder")
        return None if name in (None, "none") else str(name)

    @classmethod
    def from_section(cls, section: Any) -> ServerSettings:
        """From the ``anydecode`` object of ``--additional-config``."""
        if section is None:
            return cls()
        if not isinstance(section, Mapping):
            raise ConfigError(f"--additional-config {CONFIG_KEY!r} must be an object of settings, got {section!r}")
        values = dict(section)
        policy = ServingPolicy.from_mapping(values.pop(SERVING_KEY, None))
        reward = values.get("reward")
        if reward:  # the rewards the operator itself chose are open to requests
            policy = policy.with_rewards(reward)
        return cls(defaults=values, policy=policy)

    def as_section(self) -> dict[str, Any]:
        return {**dict(self.defaults), SERVING_KEY: self.policy.as_mapping()}


def server_settings(vllm_config: Any) -> ServerSettings:
    """The operator's settings from a ``VllmConfig`` (``additional_config``), else from ``anydecode serve``'s env."""
    extra = getattr(vllm_config, "additional_config", None) if vllm_config is not None else None
    if isinstance(extra, Mapping) and CONFIG_KEY in extra:
        return ServerSettings.from_section(extra[CONFIG_KEY])
    raw = os.environ.get(ENV_SETTINGS)
    return ServerSettings.from_section(json.loads(raw)) if raw else ServerSettings()


_frontend: ServerSettings | None = None


def frontend_settings() -> ServerSettings:
    """The operator's settings in the API-server process (vLLM calls ``validate_params`` without a config): set by
    the endpoint plugin from the server's arguments, else read from the current vLLM config or the environment."""
    global _frontend
    if _frontend is None:
        try:
            from vllm.config import get_current_vllm_config_or_none

            config = get_current_vllm_config_or_none()
        except ImportError:  # pragma: no cover - only without vLLM
            config = None
        _frontend = server_settings(config)
    return _frontend


def set_frontend_settings(settings: ServerSettings | None) -> None:
    global _frontend
    _frontend = settings


def server_defaults(vllm_config: Any) -> dict[str, Any]:
    """The operator's decoder settings (without the serving policy)."""
    return dict(server_settings(vllm_config).defaults)


# -- tenants ---------------------------------------------------------------------------------------------------------
def _secret() -> bytes | None:
    raw = os.environ.get(ENV_SECRET)
    return raw.encode() if raw else None


def sign_tenant(api_key: str) -> str | None:
    """The signed tenant of an API key (``id.signature``), or None when the server has no secret."""
    secret = _secret()
    if secret is None:
        return None
    tenant = hashlib.sha256(b"anydecode-tenant\0" + api_key.encode()).hexdigest()[:24]
    mac = hmac.new(secret, tenant.encode(), hashlib.sha256).hexdigest()[:32]
    return f"{tenant}.{mac}"


def verify_tenant(value: Any) -> str | None:
    """The tenant id of a signed value, or None when it is missing or not signed by this server."""
    secret = _secret()
    if secret is None or not isinstance(value, str) or "." not in value:
        return None
    tenant, _, mac = value.partition(".")
    good = hmac.new(secret, tenant.encode(), hashlib.sha256).hexdigest()[:32]
    return tenant if hmac.compare_digest(good, mac) else None


# -- one request -----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RequestPlan:
    """What anydecode does for one request: the decoder, its validated config and the request's own settings."""

    decoder: Decoder
    config: DecoderConfig
    #: the settings the request itself gave (without the operator's defaults)
    request: Mapping[str, Any]
    #: the tenant (a digest of the API key) where the policy shares ASAp's state per API key
    tenant: str | None = None

    @property
    def grammar(self) -> str | None:
        return getattr(self.config, "grammar", None) or getattr(self.config, "grammar_file", None) or None

    @property
    def shareable(self) -> bool:
        """Whether requests with equal settings may share one transform (not with ASAp state private to a request)."""
        return not getattr(self.config, "asap_private", False)

    def cache_key(self) -> tuple:
        """Equal for requests whose transforms are interchangeable (same decoder, settings and tenant)."""
        items = tuple(sorted((k, repr(v)) for k, v in self.config.as_dict().items()))
        return (self.decoder.name, items, self.tenant)


def _flat(extra_args: Any) -> dict[str, Any]:
    if extra_args is None:
        return {}
    if not isinstance(extra_args, Mapping):
        raise ConfigError(f"vllm_xargs must be an object of anydecode settings, got {type(extra_args).__name__}")
    out = {}
    for key, value in extra_args.items():
        if not isinstance(key, str):
            raise ConfigError(f"anydecode setting names must be strings, got {key!r}")
        if not isinstance(value, FLAT):
            raise ConfigError(f"anydecode setting {key!r} must be a flat value (string, number or bool), "
                              f"got {type(value).__name__}")
        out[key] = value
    return out


def _is_grammar_decoder(decoder: Decoder) -> bool:
    return "grammar" in {f.name for f in decoder.config_cls.fields()}


def plan_request(extra_args: Any, server: ServerSettings, *, trusted: bool = False) -> RequestPlan | None:
    """The plan for a request's ``extra_args``, or None when anydecode leaves the request to vLLM.

    ``trusted`` (or the operator's ``trust_extra_args``) is for the operator's own code (an offline ``LLM``): its
    settings are operator settings. Otherwise the request's settings pass :func:`check_request` first, so a refused
    one never reaches a factory.
    RequestSettingError / ConfigError / RegistryError name what is wrong.
    """
    from anydecode.registry import get_decoder

    trusted = trusted or server.policy.trust_extra_args
    given = _flat(extra_args)
    for key in [k for k in given if k.startswith("_anydecode")]:
        if key != TENANT_KEY:
            raise RequestSettingError(f"setting {key!r} is reserved for anydecode itself")
    signed = given.pop(TENANT_KEY, None)
    tenant = verify_tenant(signed) if signed is not None else None
    if signed is not None and tenant is None:
        raise RequestSettingError(f"setting {TENANT_KEY!r} is reserved for anydecode's own middleware")
    name = given.get("decoder", server.decoder)
    if name is None or name == "none":
        return None
    if not isinstance(name, str):
        raise ConfigError(f"anydecode decoder must be a string, got {name!r}")
    decoder = get_decoder(name)
    if decoder.kind != "transform":
        raise ConfigError(
            f"decoder {name!r} is a {decoder.kind} decoder: vLLM's logits processors run transform decoders only; "
            "use anydecode.plugins.vllm.generate (offline) or POST /v1/anydecode/completions for search decoders"
        )
    request = {k: v for k, v in given.items() if k != "decoder"}
    own = decoder.config_cls.setting_fields({**server.defaults, **request})
    # the operator's defaults that apply to the chosen decoder (a request may choose another decoder than the
    # server's; settings of the server's decoder that the chosen one lacks are not applied)
    defaults = {k: v for k, v in server.defaults.items() if k != "decoder" and k in own}
    if _is_grammar_decoder(decoder) and not request.get("grammar") and not defaults.get("grammar") \
            and not defaults.get("grammar_file"):
        if "decoder" in given:
            raise ConfigError(f"decoder {name!r} needs a grammar: send grammar text in vllm_xargs.grammar (with "
                              "grammar_format), or use response_format / structured_outputs")
        if server.policy.plain_requests == "refuse":
            raise RequestSettingError(
                f"this server runs grammar decoder {name!r} and refuses requests without a grammar: send one with "
                "response_format, structured_outputs or vllm_xargs.grammar")
        # the settings a grammar-less request gives are still checked: an operator setting, a value over a cap or
        # an unknown name is refused (HTTP 400), never silently dropped
        if not trusted:
            check_request(name, decoder.config_cls, request, {**defaults, **request}, server.policy)
        unknown = sorted(set(request) - set(own))
        if unknown:
            raise ConfigError(f"unknown setting {unknown[0]!r} for decoder {name!r}{closest(unknown[0], own)}; "
                              f"accepted: {decoder.config_cls.fields_summary()}")
        return None  # no grammar to apply: plain vLLM sampling serves the request
    merged = {**defaults, **request}
    if not trusted:
        check_request(name, decoder.config_cls, request, merged, server.policy)
        merged = _scoped(decoder, merged, server.policy.asap_scope, tenant)
    config = decoder.configure(merged, from_strings=True)
    return RequestPlan(decoder, config, request, tenant)


def _scoped(decoder: Decoder, merged: dict[str, Any], scope: str, tenant: str | None) -> dict[str, Any]:
    """Where ASAp's learned state lives for this request, by the operator's scope."""
    fields = {f.name for f in decoder.config_cls.fields()}
    if "asap_tenant" not in fields:
        return merged
    if scope == "api_key":
        return {**merged, "asap_tenant": tenant or ""}
    if scope == "request":
        return {**merged, "asap_private": True}
    return merged
