"""Where ASAp's tries live: in the process, and optionally in a state file (``asap_state=PATH``).

A store holds one trie per key (prompt token ids, grammar, engine, vocabulary). Stores persist for the life of the
process, so ASAp keeps learning across samples and calls. A file-backed store loads the file when first used and
writes it back atomically (a temporary file in the same folder, then a rename) each time its last active row
finishes. The file is versioned JSON; a file that is corrupt or of another format or version is an error that
leaves the file untouched. Entries the process never touched are written back as they were read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from ..contracts.errors import ConfigError
from .asap_trie import AsapTrie

FORMAT = "anydecode-asap-state"
VERSION = 1


@dataclasses.dataclass(frozen=True)
class TrieKey:
    """What one ASAp trie is learned for."""

    prompt: tuple[int, ...]
    grammar: str
    engine: str
    vocabulary: str

    @property
    def digest(self) -> str:
        raw = json.dumps([list(self.prompt), self.grammar, self.engine, self.vocabulary])
        return hashlib.sha256(raw.encode()).hexdigest()[:32]


class AsapStateStore:
    """ASAp tries by key; ``path`` set means file-backed."""

    max_tries = 4096

    def __init__(self, path: Path | None = None):
        self.path = path
        self.tries: OrderedDict[str, tuple[TrieKey, AsapTrie]] = OrderedDict()
        self._unread: dict[str, dict[str, Any]] = {}
        self.active_rows = 0
        self.dirty = False
        self.lock = threading.RLock()
        if path is not None:
            self._load()

    def _bad(self, reason: str) -> ConfigError:
        return ConfigError(
            f"asap_state file {str(self.path)!r} is not a usable ASAp state ({reason}); it was left untouched: "
            "move it away or pass another asap_state path"
        )

    def _load(self) -> None:
        assert self.path is not None
        if not self.path.exists():
            if not self.path.parent.is_dir():
                raise ConfigError(f"asap_state folder {str(self.path.parent)!r} does not exist")
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self._bad(f"cannot read it as JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise self._bad(f"format is {data.get('format') if isinstance(data, dict) else None!r}, "
                            f"expected {FORMAT!r}")
        if data.get("version") != VERSION:
            raise self._bad(f"version {data.get('version')!r}, this anydecode reads version {VERSION}")
        entries = data.get("entries")
        if not isinstance(entries, dict):
            raise self._bad("no 'entries' table")
        for digest, entry in entries.items():
            try:
                key = TrieKey(tuple(int(t) for t in entry["prompt"]), str(entry["grammar"]), str(entry["engine"]),
                              str(entry["vocabulary"]))
                AsapTrie.from_records(entry["nodes"])  # validate now: a bad file fails before any generation
            except (KeyError, TypeError, ValueError) as exc:
                raise self._bad(f"entry {digest!r} is damaged: {exc}") from None
            if key.digest != digest:
                raise self._bad(f"entry {digest!r} does not match its key")
        self._unread = dict(entries)

    def trie(self, key: TrieKey, max_nodes: int) -> AsapTrie:
        """The trie for ``key`` (created empty, or read from the file, on first use)."""
        with self.lock:
            digest = key.digest
            hit = self.tries.get(digest)
            if hit is not None:
                self.tries.move_to_end(digest)
                hit[1].max_nodes = max_nodes
                return hit[1]
            raw = self._unread.pop(digest, None)
            trie = AsapTrie.from_records(raw["nodes"], max_nodes) if raw is not None else AsapTrie(max_nodes)
            self.tries[digest] = (key, trie)
            while len(self.tries) > self.max_tries:  # dropping a whole trie is sound: every EFG is 1 again
                self.tries.popitem(last=False)
            return trie

    # -- rows ------------------------------------------------------------------------------------------------------
    def row_started(self) -> None:
        with self.lock:
            self.active_rows += 1

    def row_finished(self) -> None:
        """Count a finished row; a file-backed store saves when no row is left running."""
        with self.lock:
            self.active_rows = max(0, self.active_rows - 1)
            self.dirty = True
            if self.active_rows == 0 and self.path is not None:
                self.save()

    # -- saving ----------------------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            entries = dict(self._unread)
            for digest, (key, trie) in self.tries.items():
                entries[digest] = {"prompt": list(key.prompt), "grammar": key.grammar, "engine": key.engine,
                                   "vocabulary": key.vocabulary, "nodes": trie.to_records()}
            return {"format": FORMAT, "version": VERSION, "entries": entries}

    def save(self) -> None:
        """Write the state file atomically (no-op for an in-memory store)."""
        if self.path is None:
            return
        data = json.dumps(self.snapshot(), separators=(",", ":"))
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        self.dirty = False


_stores: dict[str, AsapStateStore] = {}
_lock = threading.Lock()


def state_store(path: str | os.PathLike[str] | None = None) -> AsapStateStore:
    """The process-wide store: in memory (``path`` None) or backed by the file at ``path``."""
    resolved = Path(os.path.expanduser(str(path))).resolve() if path else None
    name = str(resolved) if resolved else ""
    with _lock:
        store = _stores.get(name)
        if store is None:
            store = AsapStateStore(resolved)
            _stores[name] = store
        return store


#: in-memory stores of tenants (``asap_tenant``), least recently used first; a tenant past the cap starts afresh
_tenants: OrderedDict[str, AsapStateStore] = OrderedDict()
MAX_TENANTS = 256


def tenant_store(tenant: str) -> AsapStateStore:
    """The in-memory store of one tenant (a server's clients with the same API key), never shared with others."""
    with _lock:
        store = _tenants.get(tenant)
        if store is None:
            store = _tenants[tenant] = AsapStateStore()
            while len(_tenants) > MAX_TENANTS:
                _tenants.popitem(last=False)
        else:
            _tenants.move_to_end(tenant)
        return store


def forget_asap_state(path: str | os.PathLike[str] | None = None) -> None:
    """Forget what ASAp learned in this process (for ``path``, or the in-memory store); files are not touched."""
    resolved = Path(os.path.expanduser(str(path))).resolve() if path else None
    with _lock:
        _stores.pop(str(resolved) if resolved else "", None)
