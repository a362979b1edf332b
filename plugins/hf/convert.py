"""transformers' side of the embedded model: converting the GGUF file to a safetensors copy, loading a model.

``anydecode.models`` owns the cache folder and its checks; the transformers work happens here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from anydecode.algorithms.contracts.errors import RuntimeAdapterError


def convert_gguf(gguf: Path, out: Path, progress: Callable[[str], None] | None) -> None:
    """Dequantise ``gguf`` with transformers and save a plain fp32 safetensors model and tokenizer in ``out``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if progress:
        progress(f"converting {gguf.name} to safetensors (once; about 20 s)")
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # a GGUF-loaded model carries a quantization config that cannot be serialised: rebuild it as a plain model
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    if [m for m in missing if "rotary" not in m] or unexpected:
        raise RuntimeAdapterError(f"conversion of {gguf} lost weights: missing={missing} unexpected={unexpected}")
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def load_folder(folder: Path, *, dtype: Any = None,
                progress: Callable[[str], None] | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a transformers model folder, in eval mode (fp32 by default)."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise RuntimeAdapterError(f"transformers is not installed ({exc}): pip install 'anydecode[hf]'") from None
    if progress:
        progress(f"loading {folder.name}")
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype or torch.float32)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return model, tokenizer
