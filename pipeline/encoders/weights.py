"""Identify model weights by content, and mark random-initialised models honestly."""
from __future__ import annotations

import json
from pathlib import Path

from cache_specs.layout import sha256_file

from ..fingerprint import hash_obj

#: written next to the weights of every model navcache initialises randomly (demo, tests)
PROVENANCE_FILE = "navcache_provenance.json"
_WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "config.json", "preprocessor_config.json")


def local_model_dir(model: str, revision: str | None = None) -> Path | None:
    """The folder holding ``model``'s files: a local path, or a hub snapshot already on disk."""
    p = Path(model).expanduser()
    if p.is_dir():
        return p
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - not downloaded (or not a hub id): no local files to hash
        return None


def weights_fingerprint(model: str, revision: str | None = None) -> str:
    d = local_model_dir(model, revision)
    if d is None:
        # Not on disk yet: the id and revision are all we know; loading will download and the
        # fingerprint will then change once, recomputing parts built against the unknown weights.
        return hash_obj({"hub": model, "revision": revision or "main"})
    files = sorted({f for pat in _WEIGHT_FILES for f in d.glob(pat)})
    return hash_obj([(f.name, sha256_file(f)) for f in files])


def read_provenance(model: str, revision: str | None = None) -> dict:
    d = local_model_dir(model, revision)
    if d is not None and (d / PROVENANCE_FILE).exists():
        return json.loads((d / PROVENANCE_FILE).read_text())
    return {"random_init": False}
