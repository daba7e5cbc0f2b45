"""Resolve file paths read from annotation files, refusing anything that leaves the dataset root.

Annotation files are data, not code we wrote: a path in them may be ``../../etc/passwd``, a URL,
an absolute path to somewhere else, or a symlink inside the dataset that points outside it.
``resolve_under`` is the one place that turns such a string into a filesystem path, and every file
a source reads goes through it or ``folder_under`` -- the files named by its own options too
(``annotations_{split}.json``, ``{split}.parquet``...), since those may be symlinks as well.

A dataset whose files deliberately live elsewhere (frames symlinked to shared storage) sets
``allow_outside_root: true`` in its source options; that lifts only the "under the root" rule, and
is named in every refusal so that the way out is one line of the project file.
"""
from __future__ import annotations

import os
import posixpath
import re
import stat
from pathlib import Path

from navcache.pipeline.errors import NavcacheError

__all__ = ["ALLOW_OUTSIDE", "Resolver", "UnsafePath", "folder_under", "resolve_under"]


class UnsafePath(NavcacheError):
    """A path from an annotation file that must not be opened; the message quotes it."""


# "scheme://anything" is a URL whatever the scheme is called.
_URL_WITH_AUTHORITY = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
# Object-store and web schemes are also written without "//" ("s3:bucket/key", "hf:repo/file").
# Other "word:" prefixes stay allowed, because "frame:001.jpg" is a legal POSIX file name.
_URL_SCHEMES = frozenset(
    {"http", "https", "ftp", "ftps", "sftp", "file", "data", "s3", "s3a", "s3n", "gs", "gcs",
     "az", "abfs", "abfss", "wasb", "wasbs", "hdfs", "hf", "ssh", "scp", "rsync", "smb"}
)
_SCHEME_PREFIX = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
# "C:\x" or "C:/x": a Windows absolute path, which on POSIX would silently become a relative name.
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")

#: the source option that lifts the "under the root" rule (named in every refusal)
ALLOW_OUTSIDE = "allow_outside_root"


def resolve_under(root: Path, rel: str, allow_outside: bool = False) -> Path:
    """Return the absolute, symlink-resolved path of ``rel`` under ``root``.

    ``rel`` is normally relative to ``root``; an absolute path is accepted only when it lies inside
    ``root``. The file need not exist (a missing file is the decoder's business, not a safety one).

    Raises UnsafePath (naming ``rel``) for: non-str values, empty strings, NUL bytes, URL-like
    strings, Windows drive paths, and anything that resolves outside ``root`` -- lexically (``..``)
    or through a symlink -- or to ``root`` itself. ``allow_outside`` (the dataset's
    ``allow_outside_root`` option) accepts paths outside ``root``; every other rule still holds.
    """
    _check_text(rel)
    # realpath resolves symlinks *before* applying "..", which is what the kernel does when the
    # file is opened; a purely lexical normpath would let "link/../x" and symlinks slip through.
    real_root = Path(os.path.realpath(root))
    candidate = Path(rel) if os.path.isabs(rel) else Path(root) / rel
    return _checked(root, rel, real_root, Path(os.path.realpath(candidate)), allow_outside)


def _check_text(rel: object) -> None:
    """UnsafePath for what no file name under a root may be, before touching the file system."""
    if not isinstance(rel, str):
        raise UnsafePath(f"path must be a string, got {type(rel).__name__} {rel!r}")
    if rel == "" or rel.strip() == "":
        raise UnsafePath(f"empty path {rel!r}")
    if "\x00" in rel:
        raise UnsafePath(f"path contains a NUL byte: {rel!r}")
    try:
        os.fsencode(rel)
    except UnicodeEncodeError:
        raise UnsafePath(f"path {rel!r} cannot be encoded for the file system (lone surrogate?)") from None
    if _URL_WITH_AUTHORITY.match(rel):
        raise UnsafePath(f"URL-like path {rel!r}: only local files under the dataset root are read")
    m = _SCHEME_PREFIX.match(rel)
    if m and m.group(1).lower() in _URL_SCHEMES:
        raise UnsafePath(f"URL-like path {rel!r}: only local files under the dataset root are read")
    if _WINDOWS_DRIVE.match(rel):
        raise UnsafePath(f"Windows absolute path {rel!r} is not a path under the dataset root")


def _checked(root: Path, rel: str, real_root: Path, real: Path, allow_outside: bool) -> Path:
    if real == real_root:
        raise UnsafePath(f"path {rel!r} names the dataset root {str(root)!r} itself, not a file in it")
    if not allow_outside and not real.is_relative_to(real_root):
        raise UnsafePath(
            f"path {rel!r} resolves to {str(real)!r}, outside the dataset root {str(real_root)!r} "
            f"(a dataset whose files live elsewhere on purpose sets {ALLOW_OUTSIDE}: true in its options)"
        )
    return real


class Resolver:
    """``resolve_under(root, rel, allow_outside)`` for many paths under one root, same results and
    refusals, at about one ``lstat`` per distinct path instead of one per path component.

    ``os.path.realpath`` resolves a path component by component, so the real path of ``a/b/c``
    is the real path of ``a/b`` joined with ``c`` resolved there: folders are resolved once
    (memo), then only the last component is looked at, and only followed when it is a symlink.
    Paths with ``.``, ``..`` or empty components, and absolute ones, take ``resolve_under``'s
    own route. Results are memoised by ``rel`` (NaVILA histories name each frame many times).
    The memos assume the tree does not change while one listing runs; make one per listing.
    """

    def __init__(self, root: Path, allow_outside: bool = False):
        self.root, self.allow_outside = Path(root), allow_outside
        self.real_root = Path(os.path.realpath(root))
        self._root_s = str(self.real_root)
        self._under = os.path.join(self._root_s, "")  # "<real root>/"
        self._dirs: dict[str, str] = {}
        self._done: dict[str, str | UnsafePath] = {}
        self._paths: dict[str, Path] = {}

    def __call__(self, rel: str) -> Path:
        """``resolve_under(root, rel, allow_outside)``."""
        path = self._paths.get(rel) if isinstance(rel, str) else None
        if path is None:
            path = Path(self.check(rel))
            if isinstance(rel, str):
                self._paths[rel] = path
        return path

    def check(self, rel: str) -> str:
        """The same, as a string: refusals without building a Path for every file named."""
        hit = self._done.get(rel) if isinstance(rel, str) else None
        if hit is None:
            try:
                hit = self._resolve(rel)
            except UnsafePath as e:
                hit = e
            if isinstance(rel, str):
                self._done[rel] = hit
        if isinstance(hit, UnsafePath):
            raise hit
        return hit

    def _resolve(self, rel: str) -> str:
        _check_text(rel)
        parts = rel.split("/")
        if os.path.isabs(rel) or any(c in ("", ".", "..") for c in parts):
            return str(resolve_under(self.root, rel, self.allow_outside))
        folder = "/".join(parts[:-1])
        real_dir = self._dirs.get(folder)
        if real_dir is None:
            real_dir = self._dirs[folder] = os.path.realpath(os.path.join(self.root, folder)) if folder else str(self.real_root)
        full = os.path.join(real_dir, parts[-1])
        try:
            link = stat.S_ISLNK(os.lstat(full).st_mode)
        except OSError:
            link = False  # missing: realpath keeps the name as written
        if link:
            return str(_checked(self.root, rel, self.real_root, Path(os.path.realpath(full)), self.allow_outside))
        if full.startswith(self._under) or (self.allow_outside and full != self._root_s):
            # ``_checked``'s tests on strings: both are normalised real paths, and a name below
            # a folder is never the root itself (Path objects cost more than the lstat)
            return full
        return str(_checked(self.root, rel, self.real_root, Path(full), self.allow_outside))


def folder_under(root: Path, rel: str, allow_outside: bool = False) -> Path:
    """``root / rel`` (unresolved) for a folder named by a config template; ``rel`` may be "." (the
    root itself), otherwise ``resolve_under``'s rules apply. Raises UnsafePath."""
    if posixpath.normpath(rel) == ".":
        return Path(root)
    resolve_under(root, rel, allow_outside)
    return Path(root) / rel
