"""ASAp against GCD on the embedded model: exact KL to the grammar-aligned target as samples accumulate.

    python benchmarks/grammar_kl.py [--runtime llamacpp|hf] [--samples 40] [--grammar '00000|1[01]{4}']

The grammar has a finite language (default: the paper's skewed binary strings, 17 of them), so the exact target
``Q(w) = P(w) 1[w in L] / Z`` is computed from the real model: every token sequence the engine accepts is
enumerated, and the model's probability of each is read from the runtime. ASAp then samples through the runtime
(``anydecode.plugins.llamacpp.generate``, or transformers' ``generate`` with ``custom_generate``); after each
sample the exact distribution of the *next* sample, given the trie learned so far, is enumerated and compared with
Q (KL in nats). GCD's distribution never changes; its KL is computed the same way. Writes
``benchmarks/results/grammar_kl_<runtime>.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CHAT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


def token_language(compiled, max_len: int) -> list[tuple[int, ...]]:
    """Every token sequence (ending in EOS) the compiled grammar accepts, up to ``max_len`` tokens."""
    eos = compiled.vocabulary.eos_token_ids
    out = []
    stack = [(compiled.matcher(), ())]
    while stack:
        matcher, prefix = stack.pop()
        for token in np.nonzero(matcher.allowed_array())[0].tolist():
            if token in eos:
                out.append(prefix + (token,))
            elif len(prefix) + 1 < max_len:
                child = matcher.fork()
                child.consume(token)
                stack.append((child, prefix + (token,)))
    return sorted(out)


class ModelProbs:
    """P(next | prompt + prefix) from llama.cpp, cached per prefix."""

    def __init__(self, llm, prompt_ids):
        from anydecode.plugins.llamacpp.session import LlamaSession

        self.session = LlamaSession(llm)
        self.prompt_len = len(prompt_ids)
        self.cache = {(): self._probs(self.session.start(prompt_ids)[0])}

    @staticmethod
    def _probs(logits) -> np.ndarray:
        x = logits.double().numpy()
        e = np.exp(x - x.max())
        return e / e.sum()

    def __call__(self, prefix) -> np.ndarray:
        prefix = tuple(int(t) for t in prefix)
        if prefix not in self.cache:
            import torch

            # one token at a time, as generate() feeds them: llama.cpp's batched logits differ in the last bits
            self.session.truncate(self.prompt_len)
            for i, token in enumerate(prefix):
                logits = self.session.append(torch.tensor([[token]]))
                self.cache.setdefault(prefix[: i + 1], self._probs(logits[0, -1]))
        return self.cache[prefix]


class HFProbs:
    """P(next | prompt + prefix) from a transformers model (one full forward per prefix), cached."""

    def __init__(self, model, prompt_ids):
        self.model = model
        self.prompt_ids = list(prompt_ids)
        self.cache: dict = {}

    def __call__(self, prefix) -> np.ndarray:
        import torch

        prefix = tuple(int(t) for t in prefix)
        if prefix not in self.cache:
            with torch.no_grad():
                logits = self.model(torch.tensor([self.prompt_ids + list(prefix)])).logits[0, -1]
            self.cache[prefix] = ModelProbs._probs(logits.float())
        return self.cache[prefix]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--grammar", default="00000|1[01]{4}")
    parser.add_argument("--format", default="regex")
    parser.add_argument("--prompt", default="Write a random binary string of length 5.")
    parser.add_argument("--runtime", default="llamacpp", choices=("llamacpp", "hf"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    args.out = args.out or str(HERE / "results" / f"grammar_kl_{args.runtime}.json")

    import anydecode.plugins.llamacpp as lc
    from anydecode.algorithms.contracts.decoder import TransformContext
    from anydecode.algorithms.grammar import forget_asap_state
    from anydecode.algorithms.grammar.exact import grammar_target, kl_divergence, transform_distribution
    from anydecode.plugins.llamacpp.text import LlamaTokenizer
    from anydecode.registry import get_decoder

    forget_asap_state()
    settings = {"grammar": args.grammar, "grammar_format": args.format}
    if args.runtime == "llamacpp":
        llm = lc.load_default(n_threads=2)
        first = lc.generate(llm, CHAT.format(args.prompt), decoder="gcd", max_new_tokens=1, **settings)
        prompt_ids = first.prompt_token_ids[0]
        tokenizer, vocab_size, eos_id = LlamaTokenizer(llm), int(llm.n_vocab()), int(llm.token_eos())
        decode_ids = lambda ids: llm.detokenize(ids).decode()  # noqa: E731
    else:
        import torch

        import anydecode.plugins.hf as hf

        model, tokenizer = hf.load_default()
        prompt_ids = tokenizer(CHAT.format(args.prompt), add_special_tokens=False).input_ids
        vocab_size, eos_id = int(model.config.vocab_size), int(tokenizer.eos_token_id)
        decode_ids = lambda ids: tokenizer.decode(ids)  # noqa: E731
    view = tokenizer if args.runtime == "llamacpp" else hf.HFTokenizer(tokenizer, vocab_size)
    ctx = TransformContext(vocab_size=vocab_size, eos_token_ids=frozenset({eos_id}), tokenizer=view,
                           runtime=args.runtime)
    gcd = get_decoder("gcd").transform(get_decoder("gcd").configure(settings), ctx)
    asap = get_decoder("asap").transform(get_decoder("asap").configure(settings), ctx)
    language = token_language(gcd.compiled, 16)
    probs = ModelProbs(llm, prompt_ids) if args.runtime == "llamacpp" else HFProbs(model, prompt_ids)
    target = grammar_target(probs, (), language)
    eos = ctx.eos_token_ids
    gcd_dist = transform_distribution(gcd, probs, (), 16, eos)
    gcd_kl = kl_divergence(gcd_dist, target)

    def asap_kl() -> float:
        from anydecode.algorithms.grammar import AsapStateStore, AsapTransform

        store = AsapStateStore()
        probe = AsapTransform(asap.compiled, asap.config, store)
        # the probe sees the prompt as () (ModelProbs holds it), so file the learned trie under that key
        store.tries[probe.key(()).digest] = (probe.key(()), asap.trie(prompt_ids).copy())
        return kl_divergence(transform_distribution(probe, probs, (), 16, eos), target)

    kls = [asap_kl()]
    outputs = []
    for seed in range(args.samples):
        if args.runtime == "llamacpp":
            text = lc.generate(llm, prompt_ids, decoder="asap", max_new_tokens=16, seed=seed, **settings).text
        else:
            ids = torch.tensor([prompt_ids])
            out = model.generate(ids, custom_generate=hf.generate, decoder="asap", seed=seed, do_sample=True,
                                 anydecode_tokenizer=tokenizer, max_new_tokens=16, **settings)
            text = tokenizer.decode(out[0, len(prompt_ids):], skip_special_tokens=True)
        outputs.append(text)
        kls.append(asap_kl())
        print(f"sample {seed + 1:3d}: {text!r:10s} ASAp next-sample KL {kls[-1]:.4f} (GCD {gcd_kl:.4f})")
    decode = lambda seq: decode_ids([t for t in seq if t not in eos])  # noqa: E731
    result = {
        "grammar": args.grammar, "prompt": args.prompt, "language_size": len(language),
        "target": {decode(k): v for k, v in sorted(target.items(), key=lambda kv: -kv[1])},
        "gcd": {decode(k): v for k, v in gcd_dist.items()},
        "gcd_kl": gcd_kl, "asap_kl": kls, "asap_outputs": outputs,
        "all_outputs_in_language": all(o in {decode(s) for s in language} for o in outputs),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(range(len(kls)), kls, label="ASAp: exact KL of the next sample")
    ax.axhline(gcd_kl, color="tab:red", linestyle="--", label="GCD")
    ax.set_xlabel("samples drawn")
    ax.set_ylabel("KL(sample || Q) [nats]")
    ax.set_title(f"{args.grammar} on SmolLM2-135M ({'llama.cpp' if args.runtime == 'llamacpp' else 'transformers'})")
    ax.legend()
    fig.tight_layout()
    png = Path(args.out).with_suffix(".png")
    fig.savefig(png, dpi=120)
    print(f"GCD KL {gcd_kl:.4f}; ASAp KL after {args.samples} samples {kls[-1]:.4f}; wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
