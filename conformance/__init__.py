"""Conformance: toy models, exact enumeration and statistical tests proving each decoder's distribution."""

from .claims import CLAIMS, CheckResult
from .enumerate import enumerate_sequences, total_variation
from .stats import chi_square_test, sample_size_for_tv
from .toy import ToyModel, ToySession, toy_context

__all__ = [
    "CLAIMS",
    "CheckResult",
    "ToyModel",
    "ToySession",
    "chi_square_test",
    "enumerate_sequences",
    "sample_size_for_tv",
    "toy_context",
    "total_variation",
]
