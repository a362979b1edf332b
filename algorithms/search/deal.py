"""DeAL: decoding-time alignment as heuristic search (Huang et al. 2024, arXiv 2402.06147).

Keep the best ``beam`` partial sequences. At each step expand each with the model's ``k`` most likely tokens
(action pruning); score every candidate by ``f = log P(candidate) + lam * R(candidate + greedy lookahead)``, where
the lookahead rolls the candidate out greedily for ``lookahead`` tokens, and a candidate that ends (EOS) is scored
on its own full text. Candidates are ranked by ``f`` and handled like beam search: an ended candidate ranked
within the beam becomes a finished hypothesis (score: length-normalised log-likelihood plus ``lam`` times the
reward of its full text), the others continue. Once no running state can beat the kept hypotheses, or at the
length limit, the best finished hypotheses are returned.

With ``lam=0`` (or no reward) the ranking is the log-likelihood and nothing is rolled out: with ``k >= 2 * beam``
this is exactly ``beam`` search with ``num_beams=beam``.

Batching: all candidates of a step are rows of one session (``select``), rolled out together, one forward pass
per lookahead token; the session is then truncated back to the candidates, and the kept ones are selected, so the
logits after each kept candidate (from the first lookahead pass) are reused.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from ..contracts.config import config_field
from ..contracts.decoder import DecodeContext, DecodeResult
from ..contracts.errors import ConfigError
from .beam import _check_early_stopping, finish_reason, search_dtype
from .hypotheses import FinishedHypotheses, best_hypotheses
from .rewards import Reward, RewardInput, RewardSettings, checked_scores, decode_text
from ..loop import processed, stops
from .rows import search_session


@dataclasses.dataclass(frozen=True)
class DealConfig(RewardSettings):
    """DeAL search: frontier width, actions per state, lookahead length, reward weight and the rewards."""

    beam: int = config_field(2, ge=1, request=True, cap="beams", help="partial sequences kept at each step")
    k: int = config_field(5, ge=1, request=True, cap="expansions", help="top-k tokens each kept sequence is expanded with")
    lookahead: int = config_field(4, ge=0, request=True, cap="lookahead", help="greedy tokens rolled out before scoring a candidate")
    lam: float | None = config_field(None, ge=0.0, request=True,
                                    help="weight of the reward (default: 1 with a reward, else 0)")
    length_penalty: float = config_field(1.0, request=True, help="finished scores use sum_logprob / length**length_penalty")
    early_stopping: bool | str = config_field(False, request=True, help="True, False or 'never' (as beam search)")
    num_return_sequences: int = config_field(1, ge=1, request=True, cap="beams",
                                             help="sequences returned per prompt, best first")

    def rows_per_prompt(self) -> int:
        return self.beam * self.k  # every candidate of a step is rolled out as a row

    def validate(self) -> None:
        super().validate()
        _check_early_stopping(self.early_stopping)
        if self.num_return_sequences > self.beam:
            raise ConfigError(f"num_return_sequences={self.num_return_sequences} must be <= beam={self.beam}")
        if self.lam is not None and self.lam > 0 and not self.reward:
            raise ConfigError(
                f"lam={self.lam} weighs a reward but none is chosen: set reward= (keywords, length, regex, "
                "callable, reward_model or a registered one), or lam=0 for plain beam search"
            )


@dataclasses.dataclass
class _Candidate:
    loglik: float  # cumulative log-likelihood g
    token: int
    parent: int  # session row of the state it extends
    tokens: list[int]  # generated tokens including ``token``
    rollout: list[int] = dataclasses.field(default_factory=list)  # tokens plus the greedy lookahead
    reward: float = 0.0
    rank_score: float = 0.0
    row: int = -1  # its row in the lookahead batch


def run_deal(config: DealConfig, ctx: DecodeContext, reward: Reward | None = None) -> DecodeResult:
    """The ``deal`` decoder; ``reward`` defaults to the one ``config`` names."""
    if reward is None and config.reward:
        reward = config.build_reward()
    lam = config.lam if config.lam is not None else (1.0 if config.reward else 0.0)
    return deal_search(ctx, reward=reward, beam=config.beam, k=config.k, lookahead=config.lookahead, lam=lam,
                       length_penalty=config.length_penalty, early_stopping=config.early_stopping,
                       num_return_sequences=config.num_return_sequences)


def deal_search(ctx: DecodeContext, *, reward: Reward | None, beam: int, k: int, lookahead: int, lam: float,
                length_penalty: float = 1.0, early_stopping: bool | str = False,
                num_return_sequences: int = 1) -> DecodeResult:
    started = time.perf_counter()
    prompts = len(ctx.prompts)
    eos = frozenset(ctx.eos_token_ids)
    pad = ctx.pad
    keep = max(2, 1 + len(eos)) * beam
    guided = reward is not None and lam != 0.0
    prompt_texts = [decode_text(ctx.tokenizer, p) for p in ctx.prompts] if guided else [""] * prompts
    max_rows = prompts * beam * k
    counters = {"forward_passes": 0, "lookahead_passes": 0, "reward_calls": 0}

    def score(items: list[RewardInput]) -> list[float]:
        if not items:
            return []
        assert reward is not None
        counters["reward_calls"] += len(items)
        return checked_scores(reward, items)

    def text_input(p: int, tokens: list[int], finished: bool) -> RewardInput:
        body = [t for t in tokens if t not in eos]
        return RewardInput(prompt_texts[p], decode_text(ctx.tokenizer, body), tuple(body), finished)

    with search_session(ctx, max_rows, "deal", lookahead + 1) as (session, logits):
        dtype = search_dtype(logits)
        hyps = [FinishedHypotheses(beam, length_penalty, early_stopping, max(ctx.max_new_tokens, 1))
                for _ in range(prompts)]
        # running states: (session row, log-likelihood, generated tokens) per prompt
        running: list[list[tuple[int, float, list[int]]]] = [[(p, 0.0, [])] for p in range(prompts)]
        steps = 0
        for step in range(ctx.max_new_tokens):
            steps += 1
            logp = torch.log_softmax(logits.to(dtype), dim=-1)
            expanding = [(p, row, seq) for p in range(prompts) for row, _g, seq in running[p]]
            if expanding and ctx.processors is not None:
                index = torch.tensor([row for _p, row, _seq in expanding], dtype=torch.long)
                logp = logp.clone()
                logp[index] = processed(ctx, [p for p, _r, _s in expanding], [s for _p, _r, s in expanding],
                                        logp[index])
            width = min(k, logp.shape[-1])
            top_lp, top_tok = torch.topk(logp, width, dim=-1)
            candidates: list[list[_Candidate]] = []
            for p in range(prompts):
                found = []
                for row, g, seq in running[p]:
                    values = (top_lp[row] + torch.tensor(g, dtype=dtype)).tolist()
                    for value, token in zip(values, top_tok[row].tolist()):
                        found.append(_Candidate(value, token, row, seq + [token]))
                found.sort(key=lambda c: -c.loglik)
                candidates.append(found)
            remaining = ctx.max_new_tokens - (step + 1)
            after: torch.Tensor | None = None
            if guided:
                after = _lookahead(ctx, session, candidates, eos, pad, min(lookahead, remaining), counters,
                                   need_logits=remaining > 0)
                items, owners = [], []
                for p, found in enumerate(candidates):
                    for cand in found:
                        text = cand.rollout
                        ended = text[-1] in eos or len(text) >= ctx.max_new_tokens
                        items.append(text_input(p, text, ended))
                        owners.append(cand)
                for cand, value in zip(owners, score(items)):
                    cand.reward = value
                    cand.rank_score = cand.loglik + lam * value
            else:
                for found in candidates:
                    for cand in found:
                        cand.rank_score = cand.loglik
            chosen_rows: list[int] = []
            next_tokens: list[int] = []
            new_running: list[list[tuple[int, float, list[int]]]] = []
            for p, found in enumerate(candidates):
                if not running[p]:
                    new_running.append([])
                    continue
                ranked = sorted(found, key=lambda c: -c.rank_score)[:keep]
                kept: list[_Candidate] = []
                for rank, cand in enumerate(ranked):
                    if cand.token in eos or stops(ctx, p, cand.tokens):
                        if rank >= beam:
                            continue
                        hyps[p].add(cand.tokens, cand.loglik, step + 1, lam * cand.reward if guided else 0.0)
                    else:
                        kept.append(cand)
                    if len(kept) == beam:
                        break
                if not kept and any(c.token in eos or stops(ctx, p, c.tokens) for c in ranked):
                    new_running.append([])  # every candidate ended (EOS or a stopping rule): the search is over
                    continue
                if not kept:
                    raise ConfigError(
                        f"deal found only {len(kept)} continuations for beam={beam}: raise k={k} (each state is "
                        "expanded with k tokens, some of which end the sequence)"
                    )
                best = kept[0]
                bonus = lam * best.reward if guided else 0.0
                if step < ctx.max_new_tokens - 1 and hyps[p].is_done(best.loglik, step + 1, bonus):
                    new_running.append([])
                    continue
                rows_p = []
                for cand in kept:
                    rows_p.append((len(chosen_rows), cand.loglik, cand.tokens))
                    chosen_rows.append(cand.row if guided else cand.parent)
                    next_tokens.append(cand.token)
                new_running.append(rows_p)
            running = new_running
            if step == ctx.max_new_tokens - 1 or not chosen_rows:
                break
            if guided:
                session.select(chosen_rows)
                assert after is not None
                logits = after.index_select(0, torch.tensor(chosen_rows, dtype=torch.long))
            else:
                session.select(chosen_rows)
                logits = session.append(torch.tensor(next_tokens, dtype=torch.long).unsqueeze(1))[:, -1]
                counters["forward_passes"] += 1

        out_sequences, out_rows, out_scores, reasons = [], [], [], []
        for p in range(prompts):
            if running[p] and steps:
                finals = running[p]
                bonuses = [0.0] * len(finals)
                if guided:
                    bonuses = [lam * v for v in score([text_input(p, seq, True) for _r, _g, seq in finals])]
                for (_row, g, seq), bonus in zip(finals, bonuses):
                    hyps[p].add(seq, g, len(seq), bonus)
            for hyp in best_hypotheses([hyps[p]], num_return_sequences):
                out_sequences.append(hyp.tokens)
                out_rows.append(p)
                out_scores.append(hyp.score)
                reasons.append(finish_reason(hyp.tokens, eos, stops(ctx, p, hyp.tokens)))
            if not steps:
                out_sequences.append([])
                out_rows.append(p)
                out_scores.append(0.0)
                reasons.append("length")
    stats: dict[str, Any] = {
        "new_tokens": sum(len(s) for s in out_sequences),
        "steps": steps,
        **counters,
        "decode_seconds": time.perf_counter() - started,
    }
    stats["forward_passes"] += counters["lookahead_passes"]
    return DecodeResult(sequences=out_sequences, prompt_rows=out_rows, finish_reasons=reasons, scores=out_scores,
                        stats=stats)


def _lookahead(ctx: DecodeContext, session: Any, candidates: list[list[_Candidate]], eos: frozenset[int], pad: int,
               length: int, counters: dict[str, int], need_logits: bool = True) -> torch.Tensor:
    """Roll every continuing candidate out greedily; leaves the session holding one row per such candidate.

    Sets ``cand.row`` (its session row) and ``cand.rollout`` (its tokens plus the greedy lookahead, cut at EOS);
    returns the logits after each candidate's own token, shape ``(rows, vocab)``.
    """
    parents: list[int] = []
    tokens: list[int] = []
    prompt_of: list[int] = []
    for p, found in enumerate(candidates):
        for cand in found:
            if cand.token in eos:
                cand.row = -1
                continue
            cand.row = len(parents)
            parents.append(cand.parent)
            tokens.append(cand.token)
            prompt_of.append(p)
    for found in candidates:
        for cand in found:
            cand.rollout = list(cand.tokens)
    if not parents or (not need_logits and length == 0):
        return torch.empty(0)
    start = session.length
    session.select(parents)
    after = session.append(torch.tensor(tokens, dtype=torch.long).unsqueeze(1))[:, -1]
    counters["lookahead_passes"] += 1
    owners = [c for found in candidates for c in found if c.row >= 0]
    ended = [False] * len(parents)
    current = after
    rollouts = [[] for _ in parents]
    for cand in owners:
        rollouts[cand.row] = cand.rollout
    for i in range(length):
        greedy = processed(ctx, prompt_of, rollouts, current).argmax(dim=-1).tolist()
        for cand in owners:
            if not ended[cand.row]:
                cand.rollout.append(greedy[cand.row])
                ended[cand.row] = greedy[cand.row] in eos
        if i == length - 1 or all(ended):
            break
        block = [pad if ended[r] else greedy[r] for r in range(len(parents))]
        current = session.append(torch.tensor(block, dtype=torch.long).unsqueeze(1))[:, -1]
        counters["lookahead_passes"] += 1
    session.truncate(start + 1)
    return after
