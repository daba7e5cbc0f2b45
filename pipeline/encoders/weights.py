"""Identify model weights by content, mark random-initialised models honestly, and check before a
run that every model it needs can be had (``check_model``), so a missing one fails in one line.

Weights are hashed once per file version: ``weights_fingerprint`` goes through a ``FileHasher``
whose memo (same key and racy-clean rule as the input files') lives in the user's navcache folder
(``memo_dir()``), since one model serves every project and cache root of the user. What planning
needs to know about a model besides its weights (hidden size, processor options, config class) is
memoised there too, keyed by the weights fingerprint (which covers ``config.json`` and
``preprocessor_config.json``) and the transformers version (``model_metadata``), so that ``status``
reads it without importing transformers.
"""
from __future__ import annotations

import json
import os
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Callable

from ..errors import NavcacheError
from ..fingerprint import FileHasher, hash_obj

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


def memo_dir() -> Path:
    """The user's navcache folder for memos: ``$NAVCACHE_HOME``, else ``$XDG_CACHE_HOME/navcache``,
    else ``~/.cache/navcache``."""
    if os.environ.get("NAVCACHE_HOME"):
        return Path(os.environ["NAVCACHE_HOME"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "navcache"


def _memo_hasher() -> FileHasher:
    """The weights' file-hash memo, or an in-memory one when the folder is not writable."""
    try:
        return FileHasher(memo_dir() / "weights.sqlite")
    except (OSError, sqlite3.Error):
        return FileHasher()


def weights_fingerprint(model: str, revision: str | None = None) -> str:
    d = local_model_dir(model, revision)
    if d is None:
        # Not on disk yet: the id and revision are all we know; loading will download and the
        # fingerprint will then change once, recomputing parts built against the unknown weights.
        return hash_obj({"hub": model, "revision": revision or "main"})
    files = sorted({f for pat in _WEIGHT_FILES for f in d.glob(pat)})
    with closing(_memo_hasher()) as hasher:
        return hash_obj([(f.name, hasher(f)) for f in files])


def model_metadata(model: str, revision: str | None, compute: Callable[[], dict], extra: dict | None = None) -> dict:
    """``compute()`` (JSON-ready facts about a model read through transformers), memoised by the
    weights fingerprint, the transformers version and ``extra``. A model not on disk yet is not
    memoised (its files, and so its facts, are unknown until it is downloaded)."""
    if local_model_dir(model, revision) is None:
        return compute()
    from importlib.metadata import PackageNotFoundError, version

    try:
        tf = version("transformers")
    except PackageNotFoundError:
        tf = None
    key = hash_obj({"model": model, "revision": revision, "weights": weights_fingerprint(model, revision), "transformers": tf, **(extra or {})})
    db = _open_metadata()
    if db is None:
        return compute()
    with closing(db):
        row = db.execute("SELECT value FROM m WHERE key=?", (key,)).fetchone()
        if row is not None:
            return json.loads(row[0])
        value = compute()
        with db:
            db.execute("INSERT OR REPLACE INTO m VALUES (?, ?)", (key, json.dumps(value, sort_keys=True)))
    return value


def _open_metadata() -> sqlite3.Connection | None:
    try:
        memo_dir().mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(memo_dir() / "metadata.sqlite"), timeout=30)
        db.execute("CREATE TABLE IF NOT EXISTS m (key TEXT PRIMARY KEY, value TEXT)")
        db.commit()
        return db
    except (OSError, sqlite3.Error):
        return None


def read_provenance(model: str, revision: str | None = None) -> dict:
    d = local_model_dir(model, revision)
    if d is not None and (d / PROVENANCE_FILE).exists():
        return json.loads((d / PROVENANCE_FILE).read_text())
    return {"random_init": False}


#: seconds the one reachability request may take (it is never retried)
HUB_TIMEOUT_S = 5.0
_TRUE = {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, now or when huggingface_hub was imported."""
    from huggingface_hub import constants

    env = (os.environ.get(v, "").upper() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(env) or bool(constants.HF_HUB_OFFLINE)


def check_model(model: str, revision: str | None, field: str, seen: dict | None = None) -> str:
    """Where ``model`` will load from: "folder", "hub cache" or "hub"; else a NavcacheError in one
    line naming ``field`` and the id. ``seen`` ({(model, revision): outcome}) makes a run ask once.

    Order: a local folder; a snapshot in the local hub cache; then, only when not offline, ONE
    request to the hub (``HfApi.model_info``, ``HUB_TIMEOUT_S``, no retries), because loading an
    unreachable id spends over a minute in huggingface_hub's download retries per attempt."""
    key = (model, revision)
    if seen is not None and key in seen:
        outcome = seen[key]
        if isinstance(outcome, NavcacheError):
            raise outcome
        return outcome
    try:
        outcome = _locate(model, revision, field)
    except NavcacheError as e:
        if seen is not None:
            seen[key] = e
        raise
    if seen is not None:
        seen[key] = outcome
    return outcome


def _locate(model: str, revision: str | None, field: str) -> str:
    if Path(model).expanduser().is_dir():
        return "folder"  # before importing huggingface_hub: planning over local models never needs it
    from huggingface_hub import constants
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(model)
    except HFValidationError:
        raise NavcacheError(f"{field}: {model!r} is neither an existing folder nor a hub id (org/name)") from None
    if local_model_dir(model, revision) is not None:
        return "hub cache"
    at = f"{model!r}" + (f" (revision {revision!r})" if revision else "")
    if hub_offline():
        raise NavcacheError(
            f"{field}: {at} is not a local folder nor in the local hub cache ({constants.HF_HUB_CACHE}) and "
            f"HF_HUB_OFFLINE=1 forbids downloading it: run `hf download {model}` where the hub is reachable, "
            f"or set {field} to a folder"
        )
    return _reach(model, revision, field, at)


def _reach(model: str, revision: str | None, field: str, at: str) -> str:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        HfApi().model_info(model, revision=revision, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        return "hub"  # it exists; loading uses the user's token and says if access is missing
    except RevisionNotFoundError:
        raise NavcacheError(f"{field}: the hub has {model!r} but no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise NavcacheError(f"{field}: no model {model!r} on the hub (a private one needs `hf auth login`)") from None
    except Exception as e:  # noqa: BLE001 - any transport failure means the same to the user
        raise NavcacheError(
            f"{field}: cannot reach the hub for {at} ({type(e).__name__}: {e}) and it is not a local folder "
            f"or in the local hub cache; without network, set HF_HUB_OFFLINE=1 and point {field} at a folder"
        ) from None
    return "hub"
