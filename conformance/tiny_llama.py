"""A tiny random-weight Llama built identically by transformers 4.x and 5.x (the golden-output reference model).

Weights are not left to transformers' initialisers (which changed between major versions): every parameter is
filled, in sorted name order, from one seeded generator. The end-of-sequence row of the output layer is scaled
up so that searches meet EOS within a few steps. Imports only torch and transformers.
"""

from __future__ import annotations

from typing import Any

VOCAB = 96
EOS = 1
SEED = 1234


def build_tiny_llama(seed: int = SEED) -> Any:
    """The model, in float32, eager attention, eval mode."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, bos_token_id=0, eos_token_id=EOS,
        pad_token_id=EOS, tie_word_embeddings=False,
    )
    config._attn_implementation = "eager"
    model = LlamaForCausalLM(config).to(torch.float32)
    generator = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    with torch.no_grad():
        for name in sorted(state):
            tensor = state[name]
            if not tensor.is_floating_point() or "rotary" in name:
                continue
            noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
            if name.endswith("norm.weight"):
                tensor.copy_(1.0 + 0.1 * noise)
            elif name == "lm_head.weight":
                tensor.copy_(0.35 * noise)
                tensor[EOS] *= 2.5
            else:
                tensor.copy_(0.25 * noise)
    model.eval()
    return model


def golden_path() -> Any:
    """The transformers 4.x group-beam-search outputs recorded on this model (``conformance/data``)."""
    from pathlib import Path

    return Path(__file__).resolve().parent / "data" / "dbs_golden_tx4.json"
