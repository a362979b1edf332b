"""The embedded model's conversion cache: where it lives, and which copies count as complete."""

import json
import struct

import pytest

from anydecode import RuntimeAdapterError
from anydecode import models


def _fake_safetensors(path, payload=16):
    header = json.dumps({"w": {"dtype": "F32", "shape": [payload // 4], "data_offsets": [0, payload]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * payload)


def _fake_conversion(folder):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    _fake_safetensors(folder / "model.safetensors")
    files = {p.name: p.stat().st_size for p in folder.iterdir()}
    (folder / "anydecode-conversion.json").write_text(json.dumps({"format": 1, "files": files}))


def test_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert models.cache_dir() == tmp_path / "anydecode"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert models.cache_dir().name == "anydecode" and models.cache_dir().parent.name == ".cache"


def test_default_gguf_path_is_the_embedded_model():
    path = models.default_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    assert models.check_gguf(path) == path


def test_complete_conversion_is_valid(tmp_path):
    _fake_conversion(tmp_path / "m")
    assert models.is_valid_conversion(tmp_path / "m")


@pytest.mark.parametrize("damage", ["truncate", "drop_marker", "drop_config", "garble_header", "bad_version"])
def test_damaged_conversion_is_detected(tmp_path, damage):
    folder = tmp_path / "m"
    _fake_conversion(folder)
    st = folder / "model.safetensors"
    if damage == "truncate":
        st.write_bytes(st.read_bytes()[:-5])
    elif damage == "drop_marker":
        (folder / "anydecode-conversion.json").unlink()
    elif damage == "drop_config":
        (folder / "config.json").unlink()
    elif damage == "garble_header":
        data = bytearray(st.read_bytes())
        data[10:14] = b"\xff\xff\xff\xff"
        st.write_bytes(bytes(data))
    else:
        marker = folder / "anydecode-conversion.json"
        marker.write_text(marker.read_text().replace('"format": 1', '"format": 99'))
    assert not models.is_valid_conversion(folder)


def test_model_file_errors_name_the_path(tmp_path):
    with pytest.raises(RuntimeAdapterError, match="model file not found: .*nope.gguf"):
        models.check_gguf(tmp_path / "nope.gguf")
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(RuntimeAdapterError, match="not a GGUF model file .*fake.gguf"):
        models.check_gguf(fake)
    with pytest.raises(RuntimeAdapterError, match="not a GGUF file or a transformers model folder"):
        models.load_hf(tmp_path)
