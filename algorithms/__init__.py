"""Runtime-agnostic decoding cores: they see token ids and logits, never a runtime."""
