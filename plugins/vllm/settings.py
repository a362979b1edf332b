"""Per-request anydecode settings in vLLM: ``SamplingParams.extra_args`` / ``vllm_xargs`` over server defaults.

Keys: ``decoder``, ``grammar``, ``grammar_format`` and each decoder setting under its own name; values are flat
(strings, numbers, booleans). Server-wide defaults come from ``--additional-config '{"anydecode": {...}}'``. A
request is handled by anydecode when the merged settings name a decoder other than ``none``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from anydecode.algorithms.contracts.config import DecoderConfig
from anydecode.algorithms.contracts.decoder import Decoder
from anydecode.algorithms.contracts.errors import AnydecodeError, ConfigError

CONFIG_KEY = "anydecode"
#: grammar decoders own their matcher; vLLM's structured outputs mask before custom processors run
OWNS_GRAMMAR = ("gcd", "asap")


def server_defaults(vllm_config: Any) -> dict[str, Any]:
    extra = getattr(vllm_config, "additional_config", None) or {}
    section = extra.get(CONFIG_KEY, {}) if isinstance(extra, Mapping) else {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"--additional-config {CONFIG_KEY!r} must be an object of settings, got {section!r}")
    return dict(section)


def request_settings(extra_args: Mapping[str, Any] | None, defaults: Mapping[str, Any]) -> dict[str, Any] | None:
    """The merged settings, or None when the request does not use anydecode."""
    merged = {**defaults, **dict(extra_args or {})}
    decoder = merged.get("decoder")
    if decoder is None or decoder == "none":
        return None
    for key, value in merged.items():
        if not isinstance(value, (str, int, float, bool)) and value is not None:
            raise ConfigError(f"anydecode setting {key!r} must be a flat value (string, number or bool), "
                              f"got {type(value).__name__}")
    return merged


def resolve(settings: Mapping[str, Any]) -> tuple[Decoder, DecoderConfig]:
    """The transform decoder and its validated config named by ``settings`` (ConfigError/RegistryError)."""
    from anydecode.registry import get_decoder

    name = settings.get("decoder")
    if not isinstance(name, str):
        raise ConfigError(f"anydecode decoder must be a string, got {name!r}")
    decoder = get_decoder(name)
    if decoder.kind != "transform":
        raise ConfigError(
            f"decoder {name!r} is a {decoder.kind} decoder: vLLM's logits processors run transform decoders only; "
            "use anydecode.plugins.vllm.generate (offline) or POST /v1/anydecode/completions for search decoders"
        )
    values = {k: v for k, v in settings.items() if k != "decoder"}
    return decoder, decoder.configure(values, from_strings=True)


def validate(sampling_params: Any, defaults: Mapping[str, Any]) -> None:
    """Raise ValueError naming the problem for bad anydecode settings (vLLM answers HTTP 400)."""
    try:
        settings = request_settings(getattr(sampling_params, "extra_args", None), defaults)
        if settings is None:
            return
        decoder, _config = resolve(settings)
    except AnydecodeError as exc:
        raise ValueError(f"anydecode: {exc}") from None
    structured = getattr(sampling_params, "structured_outputs", None)
    if structured is not None and decoder.name in OWNS_GRAMMAR:
        raise ValueError(
            f"anydecode: decoder {decoder.name!r} owns its grammar matcher and cannot be combined with vLLM's "
            "structured outputs (response_format / guided_* / structured_outputs) on the same request; "
            "pass the grammar in vllm_xargs instead"
        )
