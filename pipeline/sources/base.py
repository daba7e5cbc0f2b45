"""The source contract: a source lists episodes cheaply and decodes their frames on demand.

A source never raises for one bad episode while listing: it returns the episode with
``quarantine`` set to the reason, so the episode still shows up in the cache index.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class Episode:
    """One unit of work (a NaVILA sample, a rover clip, a video).

    ``record`` is JSON-serialisable metadata read from the annotations (instruction, labels,
    telemetry, ground-truth poses...). It enters the episode fingerprint together with the content
    hash of every path in ``files``, so a change to either recomputes exactly this episode's part.
    ``files`` are absolute paths already resolved under the dataset root, as ``str`` or ``Path``
    (NaVILA lists str: 100K ``Path`` objects were a quarter of planning's time); consumers
    ``os.fspath`` or ``Path`` them.
    """

    episode_id: str
    record: Mapping[str, Any]
    files: tuple[str | Path, ...] = ()
    quarantine: str | None = None

    def __post_init__(self):
        if self.quarantine is not None:
            # a quarantined record carries whatever the annotation held; it must still go into
            # strict JSON (fingerprints, the cache index), so NaN/inf and lone surrogates become text
            object.__setattr__(self, "record", json_safe(self.record))
            object.__setattr__(self, "episode_id", json_safe(self.episode_id))
            object.__setattr__(self, "quarantine", json_safe(self.quarantine))


def json_safe(obj: Any) -> Any:
    """``obj`` with non-finite floats as their repr and strings made UTF-8 encodable (backslash
    escapes for lone surrogates); containers are rebuilt, everything else is returned as is."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else repr(obj)
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
            return obj
        except UnicodeEncodeError:
            return obj.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(obj, Mapping):
        return {json_safe(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


@dataclass(frozen=True)
class Frames:
    """Decoded frames of one episode.

    pixels: uint8 [T, H, W, 3] RGB.
    indices: int64 [T], source frame index of each row, -1 for padding rows.
    padded: bool [T], True where the row is a black padding frame (NaVILA pads at the front).
    """

    pixels: np.ndarray
    indices: np.ndarray
    padded: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self):
        if self.padded is None:
            object.__setattr__(self, "padded", self.indices < 0)
        t = self.pixels.shape[0]
        if self.pixels.ndim != 4 or self.pixels.shape[-1] != 3 or self.pixels.dtype != np.uint8:
            raise ValueError(f"Frames.pixels must be uint8 [T,H,W,3], got {self.pixels.dtype} {self.pixels.shape}")
        if self.indices.shape != (t,) or self.padded.shape != (t,):
            raise ValueError("Frames.indices and Frames.padded must be [T]")


class Source(Protocol):
    """What the DAG needs from a source. Implementations live in ``pipeline/sources/<kind>.py``."""

    kind: str
    root: Path
    #: frozen dataclass of the source's options (``pipeline/sources/options.py``); ``options`` is the instance
    Options: type
    #: record fields that change each use's result, by use (``pipeline/sources/fields.py``)
    record_fields: Mapping[str, tuple[str, ...]]

    def episodes(self, split: str) -> list[Episode]:
        """All episodes of ``split``, sorted by ``episode_id``; bad ones carry ``quarantine``.

        Raises DatasetError when the split cannot be listed at all (e.g. malformed annotation file).
        Optional, for planning's memos: a source whose records are a function of the bytes it
        parsed sets ``listing_token`` after listing (``pipeline/fingerprint_memo.py``); one with
        ``memoised_listing = True`` takes ``episodes(split, memo=ListingMemo)`` (``pipeline/listing_memo.py``).
        """

    def read_frames(self, episode: Episode, indices: Sequence[int] | None = None, *, resize_to: tuple[int, int] | None = None,
                    fit: bool = False) -> Frames:
        """Decode the episode's sampled frames (``indices`` overrides the sampling rule).

        ``resize_to``: the (width, height) the caller resizes every frame to; a source may then
        hand out frames decoded smaller than stored (never below it, e.g. JPEG DCT scaling of a
        huge image). ``fit`` (encoder ``preprocess: fast``): with ``resize_to``, frames of every
        size come reduced by 1/2, 1/4 or 1/8 where the format decodes so (JPEG DCT scaling, the
        video decoder's scaler), the smallest still covering ``resize_to``; their pixels then differ
        slightly from a full-size decode resized (``decode.reduction``). A source that cannot
        reduce returns stored size. Raises Quarantine when a file is missing/corrupt, above the
        source's size limit, or a decoder returns fewer frames than promised.
        """


#: ids navcache gives items with no usable id ("<record #3>", "<row #12>"); a real id of this form is refused
PLACEHOLDER_ID = re.compile(r"^<(record|row) #\d+>$")


def claim_id(value: object, field_name: str, seen: dict[str, int], i: int, item: str = "record") -> str | None:
    """Why ``value`` cannot be item ``i``'s episode id (None: it can, and ``seen`` now records it).

    Refused: a non-string or blank id, one of navcache's placeholder form, one already claimed by an
    earlier item (the duplicate is quarantined under a placeholder, so ids stay unique in the index).
    """
    if not isinstance(value, str) or not value.strip():
        return f"{field_name!r} must be a non-empty string, got {value!r}"
    if PLACEHOLDER_ID.match(value):
        return f"{field_name} {value!r} has the form navcache reserves for unusable {item}s"
    if value in seen:
        return f"duplicate {field_name} {value!r} (first used by {item} #{seen[value]})"
    seen[value] = i
    return None
