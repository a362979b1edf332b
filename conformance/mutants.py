"""Planted bugs in the code under test, to prove the conformance checks notice them.

Each :class:`Mutant` is a small patch of one real function of anydecode: a snippet of its source replaced by a
wrong one. Applying it compiles the patched source in the function's own module and swaps the function's code object
in place (``__code__``), so every caller, whatever name it imported the function under, runs the mutant; the
original code is put back afterwards. A mutant whose snippet no longer appears in its function is an error
(``MutantError``): the registry cannot silently drift away from the code it plants bugs in.

``anydecode conformance --mutants`` applies each mutant in turn, runs the checks named for it, and reports it
killed when at least one fails; every mutant must be killed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import textwrap
import time
from collections.abc import Iterator
from typing import Any


class MutantError(RuntimeError):
    """A mutant cannot be applied to the current code (its snippet is gone or ambiguous)."""


@dataclasses.dataclass(frozen=True)
class Mutant:
    """A planted bug: in ``target`` (``module:function`` or ``module:Class.method``), ``find`` becomes ``replace``."""

    name: str
    target: str
    find: str
    replace: str
    #: (decoder, exact-check function name) pairs expected to notice it
    checks: tuple[tuple[str, str], ...]
    description: str = ""

    def _function(self) -> Any:
        module_name, _, path = self.target.partition(":")
        obj: Any = importlib.import_module(module_name)
        for part in path.split("."):
            obj = getattr(obj, part)
        return inspect.unwrap(obj)

    def patched_code(self) -> Any:
        """The code object of the patched function (MutantError when the snippet does not apply)."""
        function = self._function()
        source = textwrap.dedent(inspect.getsource(function))
        count = source.count(self.find)
        if count != 1:
            raise MutantError(f"mutant {self.name!r}: the snippet {self.find!r} occurs {count} times in "
                              f"{self.target} (expected once): the code changed, update the mutant")
        patched = source.replace(self.find, self.replace)
        namespace = dict(function.__globals__)
        exec(compile(patched, f"<mutant {self.name}>", "exec"), namespace)  # noqa: S102 - our own source, patched
        mutant = namespace[function.__name__]
        code = inspect.unwrap(mutant).__code__
        if code.co_freevars != function.__code__.co_freevars:
            raise MutantError(f"mutant {self.name!r}: {self.target} closes over variables; cannot swap its code")
        return code

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        function = self._function()
        original = function.__code__
        function.__code__ = self.patched_code()
        try:
            yield
        finally:
            function.__code__ = original


MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "nucleus before temperature",
        "anydecode.algorithms.sampling.warpers:warp_logits",
        "    out = apply_temperature(logits, config.temperature)\n    out = apply_top_k(out, config.top_k)\n"
        "    out = apply_top_p(out, config.top_p)\n",
        "    out = apply_top_k(logits, config.top_k)\n    out = apply_top_p(out, config.top_p)\n"
        "    out = apply_temperature(out, config.temperature)\n",
        (("sample", "sampling_exact"),),
        "the top-p cut taken on the logits before temperature scales them",
    ),
    Mutant(
        "residual not renormalised",
        "anydecode.algorithms.speculative.verify:residual_distribution",
        "diff / total.clamp_min(torch.finfo(diff.dtype).tiny)",
        "diff",
        (("speculative", "lossless_exact"), ("aded", "lossless_exact")),
        "max(0, p - q) used as it is after a rejection, not divided by its mass",
    ),
    Mutant(
        "tree residual not updated after a rejected child",
        "anydecode.algorithms.speculative.verify:verify_tree",
        "cur = residual_distribution(cur, q_child)",
        "cur = cur",
        (("speculative", "lossless_exact"), ("aded", "lossless_exact")),
        "naive multi-draft: every child tested against the unchanged target (SpecInfer's update skipped)",
    ),
    Mutant(
        "missing bonus token",
        "anydecode.algorithms.speculative.decode:SpeculativeLoop.run",
        "emitted = step.accepted_tokens[b] + [step.next_tokens[b]]",
        "emitted = step.accepted_tokens[b] + ([step.next_tokens[b]] if not len(drafts[b]) or "
        "len(step.accepted_nodes[b]) < len(drafts[b]) else [])",
        (("prompt_lookup", "lossless_exact"), ("prompt_lookup", "lossless_greedy")),
        "when every draft token is accepted, the bonus token is fed to the model but never emitted",
    ),
    Mutant(
        "deterministic drafts verified with coins that depend on them",
        "anydecode.algorithms.speculative.decode:SpeculativeLoop.__init__",
        "self.coupled = not self.greedy and self.coins is None and drafter.deterministic",
        "self.coupled = False",
        (("prompt_lookup", "lossless_draft_invariance"), ("aded", "lossless_draft_invariance")),
        "Leviathan's coins for one-hot drafts instead of coupling: still lossless, but a seeded output depends on "
        "the drafts, so timing-driven draft lengths would make seeded runs differ",
    ),
    Mutant(
        "ASAp's EFG not reduced after a dead end",
        "anydecode.algorithms.grammar.transforms:AsapTransform._prepare",
        "row.trie.expand(row.node, 0.0)  # a dead end: nothing grammatical follows this prefix",
        "pass",
        (("asap", "asap_dead_ends"),),
        "a prefix with no grammatical continuation keeps its estimate, so ASAp keeps sampling into it",
    ),
    Mutant(
        "IAD re-aligns one token late",
        "anydecode.algorithms.speculative.iad:IADDrafter._realign",
        "for n in range(1, self.config.max_match_ngram + 1):",
        "for n in range(2, self.config.max_match_ngram + 2):",
        (("iad", "iad_realignment"),),
        "after an edit, IAD waits for a two-token match instead of the first unique one",
    ),
    Mutant(
        "grammar mask off by one token id",
        "anydecode.kernels.masking:unpack_bitmask",
        'bits = torch.from_numpy(np.unpackbits(as_bytes, axis=1, count=width, bitorder="little")).bool()',
        'bits = torch.from_numpy(np.unpackbits(as_bytes, axis=1, count=width, bitorder="little")).bool()'
        ".roll(1, dims=1)",
        (("gcd", "gcd_exact"),),
        "the packed allowed-token bitmask unpacked one token id too far (the masking kernel's reference)",
    ),
    Mutant(
        "diverse beam penalty from the wrong group",
        "anydecode.kernels.diverse_beam:beam_step_reference",
        "earlier = chosen[:, : g * size]",
        "earlier = chosen[:, g * size: (g + 1) * size]",
        (("dbs", "dbs_golden"),),
        "each group penalised by its own (still empty) choices instead of the earlier groups' tokens",
    ),
)


def mutant_named(name: str) -> Mutant:
    for mutant in MUTANTS:
        if mutant.name == name:
            return mutant
    raise KeyError(f"no mutant {name!r}; mutants: {', '.join(m.name for m in MUTANTS)}")


def run_mutants(quick: bool = True, names: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Apply each mutant, run its checks, and report whether one of them failed (killed)."""
    from anydecode.registry import get_decoder

    from .exact_checks import checks_for

    report = []
    for mutant in MUTANTS:
        if names is not None and mutant.name not in names:
            continue
        started = time.perf_counter()
        failures: list[str] = []
        error = None
        try:
            with mutant.applied():
                for decoder_name, check_name in mutant.checks:
                    decoder = get_decoder(decoder_name)
                    for fn in checks_for(decoder):
                        if fn.__name__ != check_name:
                            continue
                        try:
                            results = fn(decoder, quick)
                        except Exception as exc:  # noqa: BLE001 - a mutant that crashes a check is caught by it
                            failures.append(f"{decoder_name}/{check_name}: raised {type(exc).__name__}: {exc}")
                            continue
                        failures += [f"{decoder_name}/{r.name}: {r.detail}" for r in results if not r.passed]
        except MutantError as exc:
            error = str(exc)
        report.append({"mutant": mutant.name, "target": mutant.target, "description": mutant.description,
                       "killed": bool(failures) and error is None, "error": error, "failures": failures,
                       "checks": [f"{d}/{c}" for d, c in mutant.checks],
                       "seconds": round(time.perf_counter() - started, 2)})
    return report
