"""Search decoders on the embedded model, side by side: DeAL keyword coverage, diverse vs plain beam search.

    python benchmarks/search_bench.py [--runtime llamacpp|hf] [--sets 30] [--max-new-tokens 24]

For each CommonGen-style keyword set of ``workloads/keywords.jsonl`` (chat prompt "Write one sentence using: ..."):

* keyword coverage (share of the set's keywords the answer uses, ``keywords`` reward) of greedy, beam and DeAL
  (keyword reward), and the likelihood cost: mean log-probability per token of each answer, rescored by the model;
* ``dbs`` against ``beam`` with the same total beams: decoding throughput (beam-tokens per second, run alternately
  in one process), and the diversity of the returned sets (distinct-1/2, self-BLEU);
* DeAL's cost per token against beam's.

Writes ``benchmarks/results/search_<runtime>.json`` and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter
from pathlib import Path
from anydecode.workloads import FOLDER

HERE = Path(__file__).resolve().parent
CHAT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


def distinct_n(sequences: list[list[int]], n: int) -> float:
    grams = [tuple(s[i: i + n]) for s in sequences for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def bleu(candidate: list[int], references: list[list[int]], max_n: int = 4) -> float:
    """Sentence BLEU with add-one smoothing of the n-gram precisions (Lin and Och 2004)."""
    if not candidate:
        return 0.0
    log_p = 0.0
    for n in range(1, max_n + 1):
        cand = Counter(tuple(candidate[i: i + n]) for i in range(len(candidate) - n + 1))
        best: Counter = Counter()
        for ref in references:
            grams = Counter(tuple(ref[i: i + n]) for i in range(len(ref) - n + 1))
            for g, c in grams.items():
                best[g] = max(best[g], c)
        overlap = sum(min(c, best[g]) for g, c in cand.items())
        total = max(sum(cand.values()), 0)
        log_p += math.log((overlap + 1) / (total + 1)) / max_n
    closest = min((abs(len(r) - len(candidate)), len(r)) for r in references)[1]
    brevity = 1.0 if len(candidate) > closest else math.exp(1 - closest / len(candidate))
    return brevity * math.exp(log_p)


def self_bleu(sequences: list[list[int]]) -> float:
    if len(sequences) < 2:
        return 0.0
    return sum(bleu(s, sequences[:i] + sequences[i + 1:]) for i, s in enumerate(sequences)) / len(sequences)


class LlamaRuntime:
    name = "llamacpp"

    def __init__(self) -> None:
        import anydecode.plugins.llamacpp as L
        from anydecode.plugins.llamacpp.text import LlamaTokenizer

        self.L = L
        self.llm = L.load_default(n_ctx=2048)
        self.tokenizer = LlamaTokenizer(self.llm)

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.llm.tokenize(text.encode(), add_bos=False, special=True)]

    def generate(self, prompt: list[int], decoder: str, max_new: int, **settings):
        out = self.L.generate(self.llm, prompt, decoder=decoder, max_new_tokens=max_new, **settings)
        return [s.token_ids for s in out.sequences], out.stats

    def loglik(self, prompt: list[int], tokens: list[int]) -> float:
        import torch
        from anydecode.plugins.llamacpp.session import LlamaSession

        session = LlamaSession(self.llm)
        logits = [session.start(prompt)[0]]
        if len(tokens) > 1:
            logits += list(session.append([tokens[:-1]])[0])
        return sum(float(torch.log_softmax(lg.double(), -1)[t]) for lg, t in zip(logits, tokens))


class HFRuntime:
    name = "hf"

    def __init__(self) -> None:
        import torch
        from anydecode.plugins import hf

        from anydecode.models import load_hf

        self.torch = torch
        self.hf = hf
        self.model, self.tokenizer = load_hf()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def generate(self, prompt: list[int], decoder: str, max_new: int, **settings):
        ids = self.torch.tensor([prompt])
        config = {k: v for k, v in settings.items() if k not in ("num_beams", "num_return_sequences")}
        gc = {k: v for k, v in settings.items() if k in ("num_beams", "num_return_sequences")}
        out = self.model.generate(ids, attention_mask=self.torch.ones_like(ids), custom_generate=self.hf.generate,
                                  decoder=decoder, max_new_tokens=max_new, return_dict_in_generate=True,
                                  decoder_config=config, anydecode_tokenizer=self.tokenizer,
                                  pad_token_id=self.model.generation_config.eos_token_id, **gc)
        eos = self.model.generation_config.eos_token_id
        seqs = []
        for row in out.sequences:
            gen = row[len(prompt):].tolist()
            seqs.append(gen[: gen.index(eos) + 1] if eos in gen else gen)
        return seqs, out.anydecode_stats or {}

    def loglik(self, prompt: list[int], tokens: list[int]) -> float:
        torch = self.torch
        with torch.no_grad():
            logits = self.model(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1: -1].double()
        return float(torch.log_softmax(logits, -1).gather(1, torch.tensor(tokens).unsqueeze(1)).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", choices=("llamacpp", "hf"), default="llamacpp")
    parser.add_argument("--sets", type=int, default=30)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--beams", type=int, default=6)
    parser.add_argument("--groups", type=int, default=3)
    parser.add_argument("--deal", default="beam=2,k=4,lookahead=4,lam=2.0")
    parser.add_argument("--decoders", default="greedy,beam,dbs,deal", help="which of greedy,beam,dbs,deal to run")
    parser.add_argument("--tag", default="", help="suffix of the result file name")
    args = parser.parse_args()
    from anydecode.algorithms.search.rewards import KeywordsConfig, KeywordsReward, RewardInput

    runtime = LlamaRuntime() if args.runtime == "llamacpp" else HFRuntime()
    deal_settings = {k: float(v) if "." in v else int(v) for k, v in (p.split("=") for p in args.deal.split(","))}
    sets = [json.loads(line) for line in (FOLDER / "keywords.jsonl").read_text().splitlines()
            if line.strip()][: args.sets]
    eos_free = (lambda ids: [t for t in ids if t not in (runtime.tokenizer.eos_token_id,)])
    chosen = [d.strip() for d in args.decoders.split(",") if d.strip()]
    rows = []
    timing = {"beam": [0.0, 0], "dbs": [0.0, 0], "deal": [0.0, 0], "greedy": [0.0, 0]}
    for i, item in enumerate(sets):
        prompt = runtime.encode(CHAT.format(item["prompt"]))
        reward = KeywordsReward(KeywordsConfig(keywords=tuple(item["keywords"])))
        record = {"keywords": item["keywords"]}
        runs = {
            "greedy": ("greedy", {}),
            "beam": ("beam", {"num_beams": args.beams, "num_return_sequences": args.beams}),
            "dbs": ("dbs", {"num_beams": args.beams, "num_beam_groups": args.groups, "diversity_penalty": 1.0,
                            "num_return_sequences": args.beams}),
            "deal": ("deal", {"reward": "keywords", "keywords": ",".join(item["keywords"]), **deal_settings}),
        }
        runs = {k: v for k, v in runs.items() if k in chosen}
        order = list(runs) if i % 2 == 0 else list(reversed(runs))  # alternate A/B order between sets
        for name in order:
            decoder, settings = runs[name]
            started = time.perf_counter()
            seqs, stats = runtime.generate(prompt, decoder, args.max_new_tokens, **settings)
            elapsed = time.perf_counter() - started
            steps = int(stats.get("steps", max(len(s) for s in seqs)))
            width = settings.get("num_beams", deal_settings.get("beam", 1) if name == "deal" else 1)
            timing[name][0] += elapsed
            timing[name][1] += steps * width
            best = eos_free(seqs[0])
            text = runtime.tokenizer.decode(best, skip_special_tokens=True)
            record[name] = {
                "text": text,
                "coverage": reward(RewardInput("", text, tuple(best), True)),
                "loglik_per_token": runtime.loglik(prompt, seqs[0]) / max(1, len(seqs[0])),
                "seconds": elapsed,
                "tokens": len(seqs[0]),
                "seconds_per_token": elapsed / max(1, len(seqs[0])),
            }
            if name in ("beam", "dbs"):
                bodies = [eos_free(s) for s in seqs]
                record[name].update(distinct_1=distinct_n(bodies, 1), distinct_2=distinct_n(bodies, 2),
                                    self_bleu=self_bleu(bodies), returned=len(bodies))
        rows.append(record)
        print(f"[{i + 1}/{len(sets)}] " + "  ".join(f"{n}={record[n]['coverage']:.2f} ({record[n]['seconds']:.1f}s)"
                                                    for n in runs), flush=True)

    def mean(name, key):
        return sum(r[name][key] for r in rows) / len(rows)

    names = [n for n in ("greedy", "beam", "dbs", "deal") if n in chosen]
    summary: dict = {
        "runtime": runtime.name,
        "sets": len(rows),
        "max_new_tokens": args.max_new_tokens,
        "coverage": {n: mean(n, "coverage") for n in names},
        "loglik_per_token": {n: mean(n, "loglik_per_token") for n in names},
        "seconds_per_token": {n: mean(n, "seconds_per_token") for n in names},
        "settings": {"beams": args.beams, "groups": args.groups, "diversity_penalty": 1.0, "deal": deal_settings},
    }
    if "beam" in chosen and "dbs" in chosen:
        summary["beam_tokens_per_second"] = {n: timing[n][1] / timing[n][0] for n in ("beam", "dbs")}
        summary["dbs_over_beam_throughput"] = summary["beam_tokens_per_second"]["dbs"] / \
            summary["beam_tokens_per_second"]["beam"]
        summary["diversity"] = {n: {k: mean(n, k) for k in ("distinct_1", "distinct_2", "self_bleu")}
                                for n in ("beam", "dbs")}
    if "beam" in chosen and "deal" in chosen:
        summary["deal_over_beam_cost_per_token"] = mean("deal", "seconds_per_token") / mean("beam", "seconds_per_token")
    if "greedy" in chosen and "deal" in chosen:
        summary["deal_over_greedy_cost_per_token"] = (mean("deal", "seconds_per_token")
                                                      / mean("greedy", "seconds_per_token"))
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    report = json.dumps({"summary": summary, "rows": rows}, indent=1)
    (out_dir / f"search_{runtime.name}{args.tag}.json").write_text(report)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
