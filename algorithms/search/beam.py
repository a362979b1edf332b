"""Beam search and diverse (group) beam search over a model session, every beam of a step in one forward pass.

``num_beams`` beams are split into ``num_beam_groups`` groups of equal size. At each step the groups are expanded
in order: group ``g`` takes the log-softmax of its beams' logits, subtracts the diversity penalty against the
tokens the earlier groups just chose (Hamming, or n-gram), adds its running scores and keeps the best
``max(2, 1 + #eos) * group_size`` candidates; an end-of-sequence candidate ranked within the group size becomes a
finished hypothesis of that group, the others continue (Vijayakumar et al. 2018; behaviour of transformers 4.x's
group beam search). A group whose hypotheses can no longer improve is done and emits padding. The penalised
scores accumulate, so returned scores include the penalties. One group is plain beam search, whose early-stop
test uses the best running beam and, at the length limit, the running beams compete with the finished ones
before any early stop, as transformers' ``num_beams`` generation does; with several groups the test uses the
best candidate of the step, as transformers 4.x's group beam scorer did.

Per step the session gets one ``select(parents)`` (cache reordered) and one ``append`` of every beam's token. The
candidates of a step come from the kernels' dispatcher (``anydecode.kernels.diverse_beam_step``): with the Hamming
penalty one call ranks every group of every prompt (the kernel chooses, for the later groups' penalties, the same
tokens the loop below keeps); with n-gram diversity, or a runtime stopping rule that can end a non-EOS candidate,
the penalty is formed here and each group is ranked by its own call. Ties rank the lower (beam, token) first.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import torch

from ... import kernels
from ..contracts.config import DecoderConfig, config_field
from ..contracts.decoder import DecodeContext, DecodeResult
from ..contracts.errors import ConfigError
from .diversity import hamming_penalty, ngram_penalty
from .hypotheses import FinishedHypotheses, best_hypotheses
from ..loop import processed, stops
from .rows import search_session

#: the score of beams that must not be chosen (the copies of a prompt at the first step)
DEAD = -1e9


def _check_early_stopping(value: Any) -> None:
    if value is not True and value is not False and value != "never":
        raise ConfigError(f"early_stopping={value!r} is not one of True, False, 'never'")


@dataclasses.dataclass(frozen=True)
class BeamConfig(DecoderConfig):
    """Plain beam search (transformers' ``num_beams`` generation)."""

    num_beams: int = config_field(4, ge=1, request=True, cap="beams", help="beams kept at each step")
    length_penalty: float = config_field(1.0, request=True, help="scores are sum_logprob / length**length_penalty")
    early_stopping: bool | str = config_field(False, request=True, help="True, False or 'never' (see transformers)")
    num_return_sequences: int = config_field(1, ge=1, request=True, cap="beams",
                                             help="sequences returned per prompt, best first")

    def rows_per_prompt(self) -> int:
        return 2 * self.num_beams  # the candidates of a step (transformers keeps 2 x num_beams)

    def validate(self) -> None:
        super().validate()
        _check_early_stopping(self.early_stopping)
        if self.num_return_sequences > self.num_beams:
            raise ConfigError(
                f"num_return_sequences={self.num_return_sequences} must be <= num_beams={self.num_beams}"
            )


@dataclasses.dataclass(frozen=True)
class DiverseBeamConfig(BeamConfig):
    """Diverse beam search: ``num_beams`` split into ``num_beam_groups`` groups penalised for choosing alike."""

    num_beam_groups: int = config_field(2, ge=1, request=True, cap="beams", help="groups the beams are split into; 1 is plain beam search")
    diversity_penalty: float = config_field(0.5, request=True, help="lambda: subtracted per earlier-group match")
    diversity: str = config_field("hamming", choices=("hamming", "ngram"), request=True, help="what counts as a match")
    diversity_ngram: int = config_field(2, ge=1, le=8, request=True, help="n of the n-gram diversity")

    def validate(self) -> None:
        super().validate()
        if self.num_beam_groups > self.num_beams or self.num_beams % self.num_beam_groups:
            raise ConfigError(
                f"num_beams={self.num_beams} is not divisible by num_beam_groups={self.num_beam_groups}: "
                "each group needs the same number of beams (e.g. num_beams=6 with num_beam_groups 1, 2, 3 or 6)"
            )
        if self.num_beam_groups > 1 and self.diversity_penalty <= 0.0:
            raise ConfigError(
                f"diversity_penalty={self.diversity_penalty} must be > 0 with num_beam_groups="
                f"{self.num_beam_groups}: with no penalty every group repeats the first one"
            )


def search_dtype(logits: torch.Tensor) -> torch.dtype:
    """Scores are kept in float32 as transformers does, or in float64 when the model gives float64."""
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def finish_reason(tokens: Sequence[int], eos: frozenset[int], stopped: bool = False) -> str:
    return "stop" if stopped or (tokens and tokens[-1] in eos) else "length"


def run_beam(config: BeamConfig, ctx: DecodeContext) -> DecodeResult:
    """The ``beam`` decoder: one group."""
    return beam_search(ctx, num_beams=config.num_beams, length_penalty=config.length_penalty,
                       early_stopping=config.early_stopping, num_return_sequences=config.num_return_sequences,
                       decoder="beam")


def run_diverse_beam(config: DiverseBeamConfig, ctx: DecodeContext) -> DecodeResult:
    """The ``dbs`` decoder."""
    return beam_search(ctx, num_beams=config.num_beams, num_beam_groups=config.num_beam_groups,
                       diversity_penalty=config.diversity_penalty, diversity=config.diversity,
                       diversity_ngram=config.diversity_ngram, length_penalty=config.length_penalty,
                       early_stopping=config.early_stopping, num_return_sequences=config.num_return_sequences,
                       decoder="dbs")


def beam_search(ctx: DecodeContext, *, num_beams: int, num_beam_groups: int = 1, diversity_penalty: float = 0.0,
                diversity: str = "hamming", diversity_ngram: int = 2, length_penalty: float = 1.0,
                early_stopping: bool | str = False, num_return_sequences: int = 1,
                decoder: str = "dbs") -> DecodeResult:
    """Run (group) beam search on every prompt of ``ctx``; ``num_return_sequences`` results per prompt."""
    started = time.perf_counter()
    prompts = len(ctx.prompts)
    width = num_beams
    groups = num_beam_groups
    group_size = width // groups
    eos = frozenset(ctx.eos_token_ids)
    pad = ctx.pad
    keep = max(2, 1 + len(eos)) * group_size
    # transformers' group scorer tests "done" against the step's best candidate, its beam search against the
    # best running beam; one group is plain beam search
    bound_by_candidates = groups > 1
    # one dispatcher call ranks every group when the kernel's choices (the first group_size non-EOS candidates)
    # are the loop's: Hamming diversity and no stopping rule that can end a non-EOS candidate
    joint_step = groups == 1 or (diversity == "hamming" and ctx.stopping is None)
    eos_ids = sorted(eos)
    with search_session(ctx, prompts * width, decoder) as (session, prompt_logits):
        rows = prompts * width
        session.select([p for p in range(prompts) for _ in range(width)])
        logits = prompt_logits.repeat_interleave(width, dim=0)
        dtype = search_dtype(logits)
        beam_scores = torch.full((rows,), DEAD, dtype=dtype)
        beam_scores.view(prompts, width)[:, ::group_size] = 0.0
        sequences: list[list[int]] = [[] for _ in range(rows)]
        hyps = [[FinishedHypotheses(group_size, length_penalty, early_stopping, max(ctx.max_new_tokens, 1))
                 for _ in range(groups)] for _ in range(prompts)]
        done = [[False] * groups for _ in range(prompts)]
        forwards = 0
        steps = 0
        for step in range(ctx.max_new_tokens):
            steps += 1
            logp = torch.log_softmax(logits.to(dtype), dim=-1)
            # the runtime's processors see log-probabilities, as transformers' beam search applies them
            logp = processed(ctx, [r // width for r in range(rows)], sequences, logp)
            vocab = logp.shape[-1]
            tokens = torch.zeros(rows, dtype=torch.long)
            parents = torch.zeros(rows, dtype=torch.long)
            new_scores = torch.zeros(rows, dtype=dtype)
            kept = min(keep, group_size * vocab)
            joint = None
            if joint_step:
                joint = [t.tolist() for t in kernels.diverse_beam_step(
                    logp, beam_scores, num_beams=width, groups=groups, penalty=diversity_penalty, keep=kept,
                    eos=eos_ids, done=torch.tensor(done, dtype=torch.bool), pad=pad)]
            for g in range(groups):
                if joint is not None:
                    top_scores_l, top_beam_l, top_token_l = ([row[g] for row in part] for part in joint)
                else:
                    index = torch.tensor([p * width + g * group_size + j for p in range(prompts)
                                          for j in range(group_size)], dtype=torch.long)
                    scores = logp.index_select(0, index)
                    if g > 0:
                        scores = scores - _penalty(diversity, diversity_penalty, diversity_ngram, tokens, parents,
                                                   sequences, prompts, width, g, group_size, vocab, dtype)
                    ranked = kernels.diverse_beam_step(scores, beam_scores.index_select(0, index),
                                                       num_beams=group_size, groups=1, penalty=0.0, keep=kept)
                    top_scores_l, top_beam_l, top_token_l = ([row[0] for row in part.tolist()] for part in ranked)
                for p in range(prompts):
                    base = p * width + g * group_size
                    if done[p][g]:
                        new_scores[base: base + group_size] = 0.0
                        tokens[base: base + group_size] = pad
                        parents[base: base + group_size] = base
                        continue
                    filled = 0
                    ended = []
                    for rank, (score, beam, token) in enumerate(zip(top_scores_l[p], top_beam_l[p], top_token_l[p])):
                        parent = base + beam
                        if token in eos or stops(ctx, p, sequences[parent] + [token]):
                            ended.append((score, token, parent))
                            if rank >= group_size:
                                continue
                            hyps[p][g].add(sequences[parent] + [token], score, step + 1)
                        else:
                            new_scores[base + filled] = score
                            tokens[base + filled] = token
                            parents[base + filled] = parent
                            filled += 1
                        if filled == group_size:
                            break
                    # fewer continuations than beams (every candidate ended): as transformers does, the ended ones
                    # keep the remaining rows running with a score that can never win
                    for score, token, parent in ended[: group_size - filled]:
                        new_scores[base + filled] = score + DEAD
                        tokens[base + filled] = token
                        parents[base + filled] = parent
                        filled += 1
                    if filled < group_size:
                        raise ConfigError(
                            f"beam search found only {filled} continuations for {group_size} beams: the vocabulary "
                            f"({vocab}) is too small for num_beams={num_beams}"
                        )
                    last = step == ctx.max_new_tokens - 1
                    if bound_by_candidates:
                        done[p][g] = hyps[p][g].is_done(top_scores_l[p][0], step + 1)
                    elif not last:  # at the length limit the running beams join the finished ones first
                        done[p][g] = hyps[p][g].is_done(float(new_scores[base]), step + 1)
            parents_l = parents.tolist()
            tokens_l = tokens.tolist()
            sequences = [sequences[parents_l[r]] + [tokens_l[r]] for r in range(rows)]
            beam_scores = new_scores
            if step == ctx.max_new_tokens - 1 or all(all(d) for d in done):
                break
            session.select(parents_l)
            logits = session.append(tokens.unsqueeze(1))[:, -1]
            forwards += 1

        out_sequences, out_rows, out_scores, reasons = [], [], [], []
        for p in range(prompts):
            for g in range(groups):
                if done[p][g] or steps == 0:
                    continue
                for j in range(group_size):
                    r = p * width + g * group_size + j
                    hyps[p][g].add(sequences[r], float(beam_scores[r]), len(sequences[r]))
            for hyp in best_hypotheses(hyps[p], num_return_sequences):
                out_sequences.append(hyp.tokens)
                out_rows.append(p)
                out_scores.append(hyp.score)
                reasons.append(finish_reason(hyp.tokens, eos, stops(ctx, p, hyp.tokens)))
            if steps == 0:  # max_new_tokens=0: the empty continuation
                for _ in range(num_return_sequences):
                    out_sequences.append([])
                    out_rows.append(p)
                    out_scores.append(0.0)
                    reasons.append("length")
    stats = {
        "new_tokens": sum(len(s) for s in out_sequences),
        "steps": steps,
        "forward_passes": forwards,
        "beam_rows": rows,
        "decode_seconds": time.perf_counter() - started,
    }
    return DecodeResult(sequences=out_sequences, prompt_rows=out_rows, finish_reasons=reasons, scores=out_scores,
                        stats=stats)


def _penalty(diversity: str, penalty: float, n: int, tokens: torch.Tensor, parents: torch.Tensor,
             sequences: list[list[int]], prompts: int, width: int, group: int, group_size: int, vocab: int,
             dtype: torch.dtype) -> torch.Tensor:
    """Penalty rows ``(prompts * group_size, vocab)`` for group ``group`` against the groups before it."""
    out = []
    earlier = group * group_size
    for p in range(prompts):
        base = p * width
        if diversity == "hamming":
            row = hamming_penalty(tokens[base: base + earlier], vocab, penalty, dtype)
            out.append(row.unsqueeze(0).expand(group_size, vocab))
        else:
            previous = [sequences[int(parents[base + i])] + [int(tokens[base + i])] for i in range(earlier)]
            beams = [sequences[base + earlier + j] for j in range(group_size)]
            out.append(ngram_penalty(beams, previous, n, vocab, penalty, dtype))
    return torch.cat(out, dim=0)
