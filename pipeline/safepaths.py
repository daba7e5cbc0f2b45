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
    refusals, at about one directory listing per folder instead of one ``lstat`` per path component.

    ``os.path.realpath`` resolves a path component by component, so the real path of ``a/b/c``
    is the real path of ``a/b`` joined with ``c`` resolved there: folders are resolved once
    (memo), then only the last component is looked at, and only followed when it is a symlink.
    Whether it is one comes from the folder's ``os.scandir`` listing (the file type every
    directory entry carries: no system call per file), read once per folder; a name the listing
    lacks (a missing file, another spelling on a case-insensitive file system) and every name of
    a folder that cannot be listed get their own ``lstat``, as ``realpath`` would. So a listing
    that names each of a folder's files costs one ``scandir`` of it, no more than the plainest
    walk. Paths with ``.``, ``..`` or empty components, and absolute ones, take
    ``resolve_under``'s own route. Results are memoised by ``rel`` (NaVILA histories name each
    frame many times). The memos assume the tree does not change while one listing runs; make one
    per listing.

    ``pure`` stays True while every answer follows from the path strings and the listings of the
    folders ``listed()`` names (no symlink followed, no ``resolve_under`` fallback, no ``lstat``
    that found a name its folder's listing lacked): then a listing memo keyed by those folders'
    versions (a new, removed or replaced entry changes a folder's mtime) can stand for the answers.
    """

    def __init__(self, root: Path, allow_outside: bool = False):
        self.root, self.allow_outside = Path(root), allow_outside
        self.real_root = Path(os.path.realpath(root))
        self._root_s = str(self.real_root)
        self._under = os.path.join(self._root_s, "")  # "<real root>/"
        self._dirs: dict[str, str] = {}
        #: real folder -> {name: is a symlink} from its listing (None: it could not be listed)
        self._listings: dict[str, dict[str, bool] | None] = {}
        self._done: dict[str, str | UnsafePath] = {}
        self._refused: set[str] = set()
        #: folder (as written) -> (its real path + "/", its listing): see ``check_all``
        self._safe: dict[str, tuple[str, dict[str, bool]]] = {}
        self._paths: dict[str, Path] = {}
        self.pure = True

    def __call__(self, rel: str) -> Path:
        """``resolve_under(root, rel, allow_outside)``."""
        path = self._paths.get(rel) if isinstance(rel, str) else None
        if path is None:
            path = Path(self.check(rel))
            if isinstance(rel, str):
                self._paths[rel] = path
        return path

    def check(self, rel: str) -> str:
        """The same, as a string: refusals and resolved paths without building a Path per file."""
        hit = self._done.get(rel) if isinstance(rel, str) else None
        if hit is None:
            try:
                hit = self._resolve(rel)
            except UnsafePath as e:
                hit = e
            if isinstance(rel, str):
                self._done[rel] = hit
                if isinstance(hit, UnsafePath):
                    self._refused.add(rel)
        if isinstance(hit, UnsafePath):
            raise hit
        return hit

    def check_all(self, rels: list[str]) -> None:
        """``check`` every one of ``rels`` (raising the first refusal in their order); the ones
        already answered cost a C-speed set difference, not a call each (histories repeat paths).

        New ones in a folder already seen take a short cut: a plain relative name (``_plain``) that the
        folder's listing shows is no symlink resolves to the folder's real path + the name, as
        ``_resolve`` would find (the folder is known normal, under the root and listable);
        anything else takes ``check``."""
        done, safe = self._done, self._safe
        for rel in set(rels).difference(done):
            folder, _, name = rel.rpartition("/")
            hit = safe.get(folder)
            if hit is not None and hit[1].get(name) is False and _plain(rel) and not rel.startswith("/"):
                done[rel] = hit[0] + name
                continue
            try:
                self.check(rel)
            except UnsafePath:
                pass
        if self._refused and not self._refused.isdisjoint(rels):
            for rel in rels:
                self.check(rel)

    def resolved(self, rels) -> tuple[str, ...]:
        """The answers for ``rels``, all passed by ``check_all`` before (KeyError otherwise)."""
        return tuple(map(self._done.__getitem__, rels))

    def _resolve(self, rel: str) -> str:
        if not _plain(rel):
            _check_text(rel)
        folder, _, name = rel.rpartition("/")
        if os.path.isabs(rel) or name in ("", ".", "..") or (folder not in self._dirs and not _normal_folder(folder)):
            self.pure = False
            return str(resolve_under(self.root, rel, self.allow_outside))
        full = self._real(folder, name)
        real_dir = self._dirs[folder]
        if folder not in self._safe and self._listings.get(real_dir) is not None and (
                self.allow_outside or real_dir == self._root_s or real_dir.startswith(self._under)):
            # every plain, non-link name in this folder now resolves to real_dir/name (``check_all``)
            self._safe[folder] = (real_dir if real_dir.endswith("/") else real_dir + "/", self._listings[real_dir])
        if full.startswith(self._under) or (self.allow_outside and full != self._root_s):
            # ``_checked``'s tests on strings: both are normalised real paths, and a name below
            # a folder is never the root itself (Path objects cost more than the look-up)
            return full
        return str(_checked(self.root, rel, self.real_root, Path(full), self.allow_outside))

    def _real(self, folder: str, name: str) -> str:
        """``os.path.realpath(root/folder/name)`` for normal components: the folder's real path
        (memo, itself resolved this way from its parent's), then ``name`` followed only if a link."""
        real_dir = self._dirs.get(folder)
        if real_dir is None:
            parent, _, last = folder.rpartition("/")
            real_dir = self._dirs[folder] = self._real(parent, last) if folder else self._root_s
        full = real_dir + name if real_dir.endswith("/") else real_dir + "/" + name  # = os.path.join
        if self._is_link(real_dir, name, full):
            self.pure = False  # the target may change without any listed folder changing
            return os.path.realpath(full)
        return full

    def _is_link(self, real_dir: str, name: str, full: str) -> bool:
        """``full`` (= real_dir/name) is a symlink: from the folder's listing, else by ``lstat``."""
        if real_dir not in self._listings:
            try:
                with os.scandir(real_dir) as it:
                    # is_symlink() reads the entry's file type: no system call on Linux/macOS file systems
                    self._listings[real_dir] = {e.name: e.is_symlink() for e in it}
            except OSError:
                self._listings[real_dir] = None
        listed = self._listings[real_dir]
        if listed is not None and name in listed:
            return listed[name]
        try:
            mode = os.lstat(full).st_mode
        except OSError:
            self.pure = self.pure and listed is not None  # missing: its folder's listing says so
            return False  # missing: realpath keeps the name as written
        self.pure = False  # a name the listing lacks (another spelling on a case-insensitive file system)
        return stat.S_ISLNK(mode)

    def listed(self) -> list[str]:
        """The real folders whose listings the answers so far came from (see ``pure``)."""
        return [d for d, names in self._listings.items() if names is not None]


def _normal_folder(folder: str) -> bool:
    """A relative folder with no empty, "." or ".." component ("" is the root): realpath's
    component-by-component rule applies as ``Resolver._real`` restates it."""
    return not folder or (not folder.startswith("/") and not any(c in ("", ".", "..") for c in folder.split("/")))


def _plain(rel: object) -> bool:
    """``rel`` passes ``_check_text`` for sure: a non-blank ASCII string without ":" or NUL (every
    URL, scheme and drive rule needs a ":"; ASCII always encodes). One C-speed test per path."""
    return type(rel) is str and rel.isascii() and ":" not in rel and "\x00" not in rel and rel != "" and not rel.isspace()


def folder_under(root: Path, rel: str, allow_outside: bool = False) -> Path:
    """``root / rel`` (unresolved) for a folder named by a config template; ``rel`` may be "." (the
    root itself), otherwise ``resolve_under``'s rules apply. Raises UnsafePath."""
    if posixpath.normpath(rel) == ".":
        return Path(root)
    resolve_under(root, rel, allow_outside)
    return Path(root) / rel
