"""Per-image state of ingest, stored compactly (#19 item 4: memory that stays flat as the data grows).

A Python object per image and field (a str for each path, name and hex digest, a tuple per file, an int
per size) costs ~1 KB an image: 350 MB at 350,000 images. Here each column is one array or one bytes
blob, ~100 bytes an image in all, and the familiar tuples (Candidate, ImageCheck) are made again only
when one is asked for:

- `TextColumn`: strings in one UTF-8 blob and an array of offsets (surrogatepass: any str, names that
  came from undecodable bytes included, comes back exactly);
- `CandidateList`: the walk's candidates. A candidate's path almost always ends with its name (the
  folder walk: `<root>/<label>/<file>` and `<label>/<file>`), so only the name is stored and the path is
  one of a few shared prefixes plus the name; any other path is kept whole on the side;
- `validation.CheckList` (there, with ImageCheck): validation outcomes, the sha256 as 32 raw bytes,
  sizes and hashes as ints in arrays; a rejected file's outcome (rare, with a reason text) kept whole.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple, TypeVar

T = TypeVar("T")
DIGEST_BYTES = 32  # a sha256, raw


class Candidate(NamedTuple):
    """A file proposed as an example: where it is on disk, how reports name it, its labels per task.
    (Defined here, with the list that stores it; services.ingest.sources is where it is used.)"""

    path: str
    name: str
    labels: tuple[str | None, ...]


class Interned(list[T]):
    """A small table of distinct values (labels tuples, formats, path prefixes): id -> value, value -> id."""

    def __init__(self):
        super().__init__()
        self._ids: dict[T, int] = {}

    def id(self, value: T) -> int:
        found = self._ids.get(value)
        if found is None:
            found = self._ids[value] = len(self)
            self.append(value)
        return found


class TextColumn:
    """Strings, in order, in one blob."""

    def __init__(self):
        self._blob = bytearray()
        self._ends = array("Q")

    def append(self, text: str) -> None:
        self._blob += text.encode("utf-8", "surrogatepass")
        self._ends.append(len(self._blob))

    def __getitem__(self, index: int) -> str:
        start = self._ends[index - 1] if index else 0
        return self._blob[start:self._ends[index]].decode("utf-8", "surrogatepass")

    def __len__(self) -> int:
        return len(self._ends)

    def clear(self) -> None:
        self._blob, self._ends = bytearray(), array("Q")


class Indexed(Sequence[T]):
    """Sequence access (negative indices, slices, iteration) over `_at(index)`."""

    def _at(self, index: int) -> T:
        raise NotImplementedError

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._at(i) for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"{type(self).__name__} index out of range")
        return self._at(index)

    def __iter__(self) -> Iterator[T]:
        for index in range(len(self)):
            yield self._at(index)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # mutable, like the list it stands for


class CandidateList(Indexed[Candidate]):
    """The walk's candidates (sources.Collection.candidates), ~35 bytes each plus the name's bytes."""

    _WHOLE = 0xFFFFFFFF  # prefix id of a path kept whole in _paths

    def __init__(self, candidates: Iterable[Candidate] = ()):
        self._names = TextColumn()
        self._prefix = array("I")
        self._prefixes: Interned[str] = Interned()
        self._paths: dict[int, str] = {}
        self._labels = array("I")
        self._label_sets: Interned[tuple[str | None, ...]] = Interned()
        for candidate in candidates:
            self.append(candidate)

    def append(self, candidate: Candidate) -> None:
        path, name, labels = candidate
        if name and path.endswith(name):
            self._prefix.append(self._prefixes.id(path[:len(path) - len(name)]))
        else:
            self._paths[len(self._prefix)] = path
            self._prefix.append(self._WHOLE)
        self._names.append(name)
        self._labels.append(self._label_sets.id(labels))

    def __len__(self) -> int:
        return len(self._prefix)

    def name(self, index: int) -> str:
        return self._names[index]

    def path(self, index: int) -> str:
        prefix = self._prefix[index]
        return self._paths[index] if prefix == self._WHOLE else self._prefixes[prefix] + self._names[index]

    def labels(self, index: int) -> tuple[str | None, ...]:
        return self._label_sets[self._labels[index]]

    def _at(self, index: int) -> Candidate:
        return Candidate(self.path(index), self._names[index], self.labels(index))

    def clear(self) -> None:
        self.__init__()


class PathsView(Indexed[str]):
    """The paths of candidates [start, end), read when asked for: what the walk hands validation for
    each folder, so that the paths waiting to be validated (nearly all of them: listing is far faster
    than decoding) are not copied."""

    def __init__(self, candidates: CandidateList, start: int, end: int):
        self._candidates, self._start, self._end = candidates, start, end

    def __len__(self) -> int:
        return self._end - self._start

    def _at(self, index: int) -> str:
        return self._candidates.path(self._start + index)
