"""What every runtime adapter shares: resolving a decoder and its settings, and shaping results."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from anydecode.algorithms.contracts.config import DecoderConfig
from anydecode.algorithms.contracts.decoder import Decoder


def resolve_decoder(decoder: str | Decoder, settings: Mapping[str, Any] | None = None,
                    *, from_strings: bool = False) -> tuple[Decoder, DecoderConfig]:
    """The registered decoder (by name or object) and its validated config."""
    if isinstance(decoder, Decoder):
        dec = decoder
    else:
        from anydecode.registry import get_decoder

        dec = get_decoder(decoder)
    return dec, dec.configure(settings or {}, from_strings=from_strings)
