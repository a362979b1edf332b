"""Record transformers 4.x group (diverse) beam search outputs: run inside the venv that make_golden.py builds.

    python record_tx4.py --gguf PATH --out FILE

Writes JSON: for the tiny random Llama (tiny_llama.py) and for the embedded GGUF model, each case's prompt ids,
settings, returned generated ids (cut after the first EOS) and sequence scores, plus logits fingerprints so a
test can first check it rebuilt the same model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny_llama import build_tiny_llama  # conformance/tiny_llama.py, copied beside this script in the 4.x env

TINY_CASES = [
    {"prompt": [5, 17, 42, 9], "max_new_tokens": 12, "num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 0.5,
     "length_penalty": 1.0, "early_stopping": False, "num_return_sequences": 4},
    {"prompt": [7, 3, 88], "max_new_tokens": 10, "num_beams": 6, "num_beam_groups": 3, "diversity_penalty": 1.0,
     "length_penalty": 0.0, "early_stopping": False, "num_return_sequences": 3},
    {"prompt": [11, 60, 2, 33, 70], "max_new_tokens": 14, "num_beams": 4, "num_beam_groups": 4,
     "diversity_penalty": 2.0, "length_penalty": 1.0, "early_stopping": True, "num_return_sequences": 4},
    {"prompt": [50, 51], "max_new_tokens": 12, "num_beams": 6, "num_beam_groups": 2, "diversity_penalty": 0.3,
     "length_penalty": 1.5, "early_stopping": "never", "num_return_sequences": 6},
    {"prompt": [9, 9, 9], "max_new_tokens": 16, "num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 0.8,
     "length_penalty": -0.5, "early_stopping": False, "num_return_sequences": 2},
]

EMBEDDED_PROMPTS = [
    "<|im_start|>user\nWrite one sentence about the sea.<|im_end|>\n<|im_start|>assistant\n",
    "The capital of France is",
]
EMBEDDED_CASES = [
    {"max_new_tokens": 12, "num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 0.5, "length_penalty": 1.0,
     "early_stopping": False, "num_return_sequences": 4},
    {"max_new_tokens": 10, "num_beams": 6, "num_beam_groups": 3, "diversity_penalty": 1.0, "length_penalty": 1.0,
     "early_stopping": True, "num_return_sequences": 3},
]


def cut(ids: list[int], eos: set[int]) -> list[int]:
    for i, t in enumerate(ids):
        if t in eos:
            return ids[: i + 1]
    return ids


def run_case(model, prompt: list[int], case: dict, eos: set[int], pad: int) -> dict:
    settings = {k: v for k, v in case.items() if k not in ("prompt",)}
    ids = torch.tensor([prompt], dtype=torch.long)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             return_dict_in_generate=True, output_scores=True, pad_token_id=pad,
                             min_length=0, **settings)
    seqs = [cut(row[len(prompt):].tolist(), eos) for row in out.sequences]
    return {"prompt": prompt, "settings": settings, "sequences": seqs,
            "scores": [float(s) for s in out.sequences_scores]}


def fingerprint(model, prompt: list[int]) -> list[float]:
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, -1].float()
    return [round(float(v), 5) for v in logits[:8]]


def compact_json(value: dict) -> str:
    """JSON with one case per line: small, and readable in a diff."""
    lines = ["{"]
    items = list(value.items())
    for i, (key, item) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        if isinstance(item, dict) and "cases" in item:
            head = {k: v for k, v in item.items() if k != "cases"}
            cases = ",\n    ".join(json.dumps(c) for c in item["cases"])
            lines.append(f'  {json.dumps(key)}: {json.dumps(head)[:-1]}, "cases": [\n    {cases}\n  ]}}{comma}')
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(item)}{comma}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    result = {"transformers_version": transformers.__version__, "torch_version": torch.__version__}

    tiny = build_tiny_llama()
    eos = {tiny.config.eos_token_id}
    result["tiny"] = {
        "eos_token_ids": sorted(eos), "pad_token_id": tiny.config.pad_token_id,
        "fingerprint": {"prompt": TINY_CASES[0]["prompt"], "logits": fingerprint(tiny, TINY_CASES[0]["prompt"])},
        "cases": [run_case(tiny, c["prompt"], c, eos, tiny.config.pad_token_id) for c in TINY_CASES],
    }

    folder, name = os.path.split(args.gguf)
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
    model.eval()
    model.config._attn_implementation = "eager"
    gc_eos = model.generation_config.eos_token_id
    eos = set([gc_eos] if isinstance(gc_eos, int) else list(gc_eos or []))
    pad = model.generation_config.pad_token_id
    pad = pad if pad is not None else min(eos)
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in EMBEDDED_PROMPTS]
    cases = []
    for prompt in prompts:
        for case in EMBEDDED_CASES:
            cases.append(run_case(model, prompt, dict(case), eos, pad))
    result["embedded"] = {"eos_token_ids": sorted(eos), "pad_token_id": pad,
                          "fingerprint": {"prompt": prompts[1], "logits": fingerprint(model, prompts[1])},
                          "cases": cases}
    with open(args.out, "w") as fh:
        fh.write(compact_json(result))


if __name__ == "__main__":
    main()
