"""What a decoder may claim about its output, and the result type of every conformance check.

Every registered decoder states one claim (``Decoder.claim``) from this closed vocabulary, or none with a reason
(``Decoder.claim_note``); ``anydecode decoders`` shows it and ``anydecode conformance`` checks it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

#: claim -> what it promises
CLAIMS = {
    "sampling": "the output distribution equals ancestral sampling from the target after the decoder's warpers",
    "greedy-identical": "the output equals the runtime's greedy decoding, token for token",
    "lossless": "speculative: at temperature 0 identical to greedy decoding; above it distributed exactly as "
                "ancestral sampling from the warped target (chain and tree verification)",
    "grammar-constrained": "each token is drawn from P(t | w) restricted to the tokens the grammar allows",
    "grammar-aligned": "samples converge to P(w | w in the grammar's language) as the decoder learns",
    "search": "the output equals a named reference search (transformers' beam search, its 4.x group beam search)",
    "best-of-n": "the output is the best, by reward, of the N samples `sample` draws with the same settings",
}


def check_claim(claim: str | None, note: str, decoder: str) -> None:
    """ValueError for a claim outside the vocabulary, or no claim and no reason."""
    if claim is None:
        if not note:
            raise ValueError(f"decoder {decoder!r} claims nothing: say why in claim_note")
        return
    if claim not in CLAIMS:
        raise ValueError(f"decoder {decoder!r} claims {claim!r}; claims: {', '.join(CLAIMS)}")


@dataclasses.dataclass
class CheckResult:
    """One check of one decoder's claim on one runtime: what was measured against which threshold."""

    name: str
    decoder: str
    runtime: str
    claim: str
    passed: bool
    #: what ``value`` is: ``TV`` (exact total variation), ``p`` (chi-square p-value), ``KL``, ``mismatches``, ...
    metric: str = ""
    value: float | None = None
    threshold: float | None = None
    #: ``below``: passes when value < threshold; ``above``: when value >= threshold
    direction: str = "below"
    detail: str = ""
    samples: int | None = None
    seconds: float = 0.0
    #: a check that could not run here (a missing optional runtime), with why
    skipped: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def measured(name: str, decoder: str, runtime: str, claim: str, metric: str, value: float, threshold: float,
             direction: str = "below", detail: str = "", samples: int | None = None) -> CheckResult:
    """A check whose verdict is ``value`` against ``threshold``."""
    ok = value < threshold if direction == "below" else value >= threshold
    text = f"{metric} {value:.3g} ({'<' if direction == 'below' else '>='} {threshold:g})"
    return CheckResult(name, decoder, runtime, claim, bool(ok), metric, float(value), float(threshold), direction,
                       f"{text}{'; ' + detail if detail else ''}", samples)
