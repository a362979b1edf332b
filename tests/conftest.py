"""Test-wide settings: no network, no third-party plugins, quiet runtimes."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["ANYDECODE_DISABLE_PLUGINS"] = "1"
