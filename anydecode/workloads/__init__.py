"""The benchmark workloads shipped with anydecode: JSON lines of ``{"prompt", "chat", "max_new_tokens"}``.

``anydecode bench --workload NAME`` finds them here in an installed package as in a source checkout.
"""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent


def names() -> list[str]:
    """The shipped workloads' names."""
    return sorted(p.stem for p in FOLDER.glob("*.jsonl"))


def path(name: str) -> Path:
    """The file of the workload ``name`` (``editing``, ``chat``, ...)."""
    return FOLDER / f"{name}.jsonl"
