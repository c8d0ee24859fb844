"""The folders ingest may read local files from (CLASSFORGE_INGEST_LOCAL_ROOTS), and the one test of
whether a path lies inside them.

A path is inside when its real path (every symbolic link resolved, `..` removed) is a root or lies
under one; the roots are resolved the same way when they are configured, so a root given with a
trailing slash, through a symbolic link or with `..` means the folder it names. No roots means no
local path at all (deny by default).

What lies outside the roots is never described: a refusal reads the same whether the outside path
exists or not, and a symbolic link that leads outside is reported by its own name only, never by its
target (see sources._walk and collect_list_file).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from services.common.errors import InvalidArgument, NotFound, PermissionDenied

ROOTS_VARIABLE = "CLASSFORGE_INGEST_LOCAL_ROOTS"


def parse_roots(value: str) -> list[str]:
    """The ':'-separated folders of CLASSFORGE_INGEST_LOCAL_ROOTS; empty entries are ignored."""
    return [r for r in value.split(":") if r.strip()]


class LocalRoots:
    """Resolved root folders; `contains` is the confinement test used for paths and symbolic links."""

    def __init__(self, roots: Iterable[str | Path]):
        resolved: list[str] = []
        for root in roots:
            real = os.path.realpath(os.fspath(root))
            if real not in resolved:
                resolved.append(real)
        self.roots: tuple[str, ...] = tuple(resolved)

    def __bool__(self) -> bool:
        return bool(self.roots)

    def __repr__(self) -> str:
        return f"LocalRoots({list(self.roots)!r})"

    def contains(self, path: str | os.PathLike) -> bool:
        """Whether `path`'s real path is one of the roots or lies under one (whether or not it exists)."""
        real = os.path.realpath(os.fspath(path))
        return any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in self.roots)

    def resolve(self, value: str, field: str) -> Path:
        """The real path of `value`, a local source a request names. PermissionDenied when local paths are
        disabled or `value` is outside every root (the same words whether it exists or not: no existence
        oracle); NotFound only for a missing path inside a root."""
        if not self.roots:
            raise PermissionDenied(f"{field}: local paths are disabled on this service; an operator allows "
                                   f"folders by setting {ROOTS_VARIABLE} (':'-separated), or upload an "
                                   f"archive or name an object prefix instead")
        if "\x00" in value:
            raise InvalidArgument(field, "must not contain a NUL character")
        if not os.path.isabs(value):
            raise InvalidArgument(field, f"must be an absolute path on the service's file system, got {value!r}")
        if not self.contains(value):
            raise PermissionDenied(f"{field}: {value!r} is outside the folders this service may read "
                                   f"({', '.join(self.roots)}; {ROOTS_VARIABLE})")
        real = Path(os.path.realpath(value))
        if not real.exists():
            raise NotFound("folder, list file or archive", value)
        return real
