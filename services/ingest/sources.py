"""Where the images come from, turned into a local directory and a list of candidate files.

Two layouts:

- **Folder per label** (`collect_folders`): every file's label is the path of the folder holding it,
  relative to the root, so nested labels work (`shoes/boots/1.jpg` has label `shoes/boots`). Files
  directly in the root have no label and are rejected as `unlabelled`.
- **List file** (`collect_list_file`): a header names the columns, `path task1 [task2 …]`, then one
  line per image: its path relative to the list file's folder and one label per task, `-` where a
  task's label is unknown. Columns are separated by tabs if the line has any, else by whitespace.

Confinement (confine.py): a walk reads only inside its roots (the configured
CLASSFORGE_INGEST_LOCAL_ROOTS for a service's local source, the source itself otherwise). A symbolic
link, to a file or a folder, whose real target lies outside every root is rejected (`link`) under its
own name, never followed or read, and its target is never shown; one that stays inside is followed,
a folder at most once (a link loop ends). A list-file line whose path leads outside is rejected the
same way, and a list file that does is refused.

Hidden entries (a name starting with '.') and macOS archive debris (`__MACOSX`, `Thumbs.db`,
`desktop.ini`) are skipped and only counted.

Names that are not valid UTF-8 (names.py): a file whose name is not, or whose label folder's name is
not, is rejected (`invalid-name`, `invalid-label`) and listed under a printable name (`caf\\xe9.png`);
the other files are used. The folder walk judges them, so archives are extracted with such names as
they are (a wrapper folder's name does not matter); object keys a store cannot read are rejected when
listed; a list-file line that is not UTF-8 is a `malformed-line`. Zip names without the UTF-8 flag are
cp437 by the zip format (always text); a name flagged as UTF-8 that is not is kept as its bytes.

Archives (`extract_archive`, zip / tar / tar.gz) are extracted entry by entry into a fresh directory,
never with extractall: an entry with an absolute path or a `..` segment, a symbolic or hard link, a
device, FIFO or other special entry, an encrypted or oversized entry is not written and is listed
with its reason; every written path is checked to resolve inside the destination. Totals beyond the
limits (bytes, entry count) stop the extraction with ResourceExhausted. Object-store prefixes
(`download_prefix`) are copied into a directory under the same limits.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import hashlib
import os
import re
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from services.common.errors import InvalidArgument, PermissionDenied, ResourceExhausted
from services.common.storage import ObjectCorrupted, ObjectStore
from services.ingest.compact import Candidate, CandidateList, PathsView
from services.ingest.confine import LocalRoots
from services.ingest.names import is_text, name_problem, printable
from services.ingest.options import DEFAULT_LIMITS, SourceLimits
from services.ingest.validation import Reject

UNLABELLED = "unlabelled"
UNSAFE_PATH = "unsafe-path"
LINK = "link"
SPECIAL_FILE = "special-file"
TOO_LARGE = "too-large"
ENCRYPTED = "encrypted"
CORRUPT_ENTRY = "corrupt-entry"
DUPLICATE_ENTRY = "duplicate-entry"
MISSING = "missing"
MALFORMED = "malformed-line"

_JUNK_NAMES = {"__MACOSX", "Thumbs.db", "desktop.ini"}
_HEADER_FIRST = {"path", "file", "filename", "image", "#path"}
_COPY_CHUNK = 1024 * 1024

ARCHIVE_FORMATS = ("zip", "tar", "tar.gz")
_LOCAL_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS}


@dataclass
class Collection:
    tasks: tuple[str, ...]
    # Compact (services.ingest.compact): ~35 bytes a candidate plus its name, not three Python objects.
    candidates: CandidateList = field(default_factory=CandidateList)
    rejected: list[Reject] = field(default_factory=list)
    # Every (task index, label) the source names, with where it was named (folder or list file):
    # a label whose every image is rejected must be noticed, not silently vanish.
    declared: dict[tuple[int, str], str] = field(default_factory=dict)
    ignored: int = 0
    # Labels of rejected files, for per-label reject counts: name -> labels.
    rejected_labels: dict[str, tuple[str | None, ...]] = field(default_factory=dict)


def _is_junk(name: str) -> bool:
    return name.startswith(".") or name in _JUNK_NAMES


OnBatch = Callable[[Sequence[str]], None]  # a batch's paths (a PathsView: read on access)


LINK_OUTSIDE = f"{LINK}: a symbolic link leading outside the folders ingest may read is not followed"


def collect(root: Path, list_file: str = "", field_name: str = "source.list_file",
            on_batch: OnBatch | None = None, roots: LocalRoots | None = None) -> Collection:
    """The candidates of `root`. `on_batch` (if given) receives the candidates' paths as they are
    found, in the order of `candidates`, so that validation can start before the walk ends. Nothing
    outside `roots` (default: `root` itself) is read."""
    if list_file:
        found = collect_list_file(root, list_file, field_name, roots)
        if on_batch is not None:
            on_batch(PathsView(found.candidates, 0, len(found.candidates)))
        return found
    return collect_folders(root, on_batch, roots)


def collect_folders(root: Path, on_batch: OnBatch | None = None, roots: LocalRoots | None = None) -> Collection:
    """Folder-per-label layout; labels are '/'-joined folder paths relative to `root`. Plain strings
    and os.scandir throughout: the walk is the one part of ingest that is not spread over workers.
    Symbolic links are followed only inside `roots` (default: `root` itself), each folder once."""
    found = Collection(tasks=("label",))
    top = os.fspath(root)
    _walk(found, top, "", on_batch, roots if roots is not None else LocalRoots([top]), set())
    return found


def _walk(found: Collection, directory: str, label: str, on_batch: OnBatch | None, roots: LocalRoots,
          walked: set[str]) -> None:
    real = os.path.realpath(directory)
    # Checked again as each folder is entered: a folder swapped for a link to outside after its parent
    # was listed is refused here rather than read.
    if not roots.contains(real):
        found.rejected.append(Reject(printable(label) or ".", LINK_OUTSIDE))
        return
    walked.add(real)
    try:
        with os.scandir(directory) as scan:
            entries = sorted(scan, key=lambda e: e.name)
    except OSError as exc:
        found.rejected.append(Reject(printable(label) or ".", f"unreadable: the folder cannot be listed: "
                                                              f"{exc.strerror}"))
        return
    candidates, rejected, subdirs = found.candidates, found.rejected, []
    first = len(candidates)
    labels = (label,)  # shared by the folder's candidates: one tuple per folder, not per file
    for entry in entries:
        # Every name of a folder source, an extracted archive or a downloaded prefix enters here. One that
        # is not valid UTF-8 (a str with surrogate escapes, see names.py) is rejected, and is only ever
        # shown as printable(...), so reports, list files and protobuf fields get text.
        name = entry.name
        if name[0] == "." or name in _JUNK_NAMES:
            found.ignored += 1
            continue
        shown = f"{label}/{name}" if label else name
        path = entry.path
        if entry.is_symlink():
            # Judged by where it really leads, and only that: a link leading outside reads the same whether
            # its target exists or not, and the target is never named.
            path = os.path.realpath(path)
            if not roots.contains(path):
                rejected.append(Reject(printable(shown), LINK_OUTSIDE))
                continue
            if os.path.isdir(path):
                subdirs.append((path, shown, True))
                continue
            is_file = os.path.isfile(path)
        else:
            is_file = entry.is_file(follow_symlinks=False)
        if not is_file and entry.is_dir(follow_symlinks=False):
            subdirs.append((path, shown, False))  # walked with the raw label: its files are judged by it
        elif not is_file:  # a FIFO, socket or device (reading a FIFO would block), or a broken link
            rejected.append(Reject(printable(shown), f"{SPECIAL_FILE}: not a regular file"))
        elif not label:
            rejected.append(Reject(printable(shown), f"{UNLABELLED}: a file at the top level has no label folder; "
                                                     f"put each image in a folder named after its label"))
        elif problem := name_problem(label, name):
            rejected.append(Reject(printable(shown), problem))
            if is_text(label):  # a good label counts this reject, and must not vanish if it loses every file
                found.declared.setdefault((0, label), label)
                found.rejected_labels[printable(shown)] = (label,)
        else:
            candidates.append(Candidate(path, shown, labels))
            found.declared.setdefault((0, label), label)
    if on_batch is not None and len(candidates) > first:
        on_batch(PathsView(candidates, first, len(candidates)))
    for path, shown, linked in subdirs:
        # A real folder tree has no cycles; a link is followed only to a folder not walked yet, so that a
        # link to an ancestor (a loop) ends, and each link followed walks a new folder.
        if linked and path in walked:
            found.rejected.append(Reject(printable(shown), f"{LINK}: a symbolic link to a folder walked already "
                                                           f"(a loop or a second way in) is not followed"))
            continue
        _walk(found, path, shown, on_batch, roots, walked)


def _split_columns(line: str) -> list[str]:
    return [c.strip() for c in line.split("\t")] if "\t" in line else line.split()


def _unsafe(name: str) -> str:
    """Why a relative path from a list file or an archive may not be used, or '' if it may."""
    if "\x00" in name:
        return f"{UNSAFE_PATH}: the name contains a NUL character"
    normal = name.replace("\\", "/")
    if normal.startswith("/") or re.match(r"^[A-Za-z]:", normal):
        return f"{UNSAFE_PATH}: absolute path"
    if ".." in normal.split("/"):
        return f"{UNSAFE_PATH}: a '..' segment would lead outside the dataset"
    return ""


def _utf8_or_none(line: bytes) -> str | None:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return None


def collect_list_file(root: Path, list_file: str, field_name: str = "source.list_file",
                      roots: LocalRoots | None = None) -> Collection:
    """List-file layout; raises InvalidArgument(field_name, …) when the list file itself is unusable,
    PermissionDenied when it leads outside `roots` (default: `root`)."""
    problem = _unsafe(list_file)
    if problem:
        raise InvalidArgument(field_name, f"{list_file!r}: {problem.split(': ', 1)[1]}")
    roots = roots if roots is not None else LocalRoots([root])
    path = root / list_file
    if not roots.contains(path):
        raise PermissionDenied(f"{field_name}: {list_file!r} leads outside the folders ingest may read "
                               f"(through a symbolic link)")
    if not path.is_file():
        raise InvalidArgument(field_name, f"{list_file!r} is not a file in the source")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidArgument(field_name, f"{list_file!r} cannot be read: {exc.strerror}") from None
    lines: list[str | None]
    try:
        lines = data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError:
        # Then line by line: a line that is not UTF-8 (it may name a file whose name is not) is rejected
        # below and the others are used. None stands for such a line.
        lines = [_utf8_or_none(line) for line in data.removeprefix(b"\xef\xbb\xbf").splitlines()]
    numbered = [(n, line) for n, line in enumerate(lines, 1)
                if line is None or (line.strip() and not line.lstrip().startswith("# "))]
    if not numbered:
        raise InvalidArgument(field_name, f"{list_file!r} is empty")
    header_no, header = numbered[0]
    if header is None:
        raise InvalidArgument(field_name, f"{list_file!r} cannot be read as UTF-8 text: its header (line "
                                          f"{header_no}) is not valid UTF-8")
    list_file = printable(list_file)  # from here on it is shown in rejects and the report
    columns = _split_columns(header)
    if len(columns) < 2 or columns[0].lower() not in _HEADER_FIRST:
        raise InvalidArgument(field_name, f"{list_file}:{header_no}: the first line must be a header naming the "
                                          f"columns, e.g. 'path label' or 'path color shape', got {header!r}")
    tasks = tuple(columns[1:])
    if len(set(tasks)) != len(tasks):
        raise InvalidArgument(field_name, f"{list_file}:{header_no}: task names repeat in the header {tasks}")
    found = Collection(tasks=tasks)
    base = path.parent
    for number, line in numbered[1:]:
        where = f"{list_file}:{number}"
        if line is None:
            found.rejected.append(Reject(where, f"{MALFORMED}: the line is not valid UTF-8 text (a file whose name "
                                                f"is not valid UTF-8 cannot be listed: rename it)"))
            continue
        cols = _split_columns(line)
        if len(cols) != len(tasks) + 1:
            found.rejected.append(Reject(where, f"{MALFORMED}: expected {len(tasks) + 1} columns (path and one "
                                                f"label per task {', '.join(tasks)}), got {len(cols)}"))
            continue
        name, values = cols[0], cols[1:]
        labels = tuple(None if v == "-" else v for v in values)
        for task, label in enumerate(labels):
            if label is not None:
                found.declared.setdefault((task, label), list_file)
        problem = _unsafe(name)
        if problem:
            found.rejected.append(Reject(name, problem))
            found.rejected_labels[name] = labels
            continue
        file = base / name.replace("\\", "/")
        if not roots.contains(file):  # before looking at it: whether it exists out there is not said
            found.rejected.append(Reject(name, f"{LINK}: listed at {where} but leads outside the folders ingest "
                                               f"may read (through a symbolic link)"))
            found.rejected_labels[name] = labels
            continue
        if not file.is_file():
            found.rejected.append(Reject(name, f"{MISSING}: listed at {where} but not a file in the source"))
            found.rejected_labels[name] = labels
            continue
        if all(label is None for label in labels):
            found.rejected.append(Reject(name, f"{UNLABELLED}: every task's label is '-' at {where}"))
            continue
        found.candidates.append(Candidate(str(file), name, labels))
    return found


# --------------------------------------------------------------------------- archives


def detect_archive_format(path: Path) -> str:
    """"zip", "tar.gz" or "tar" from the first bytes; "" when it is none of them."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:2] == b"\x1f\x8b":
        return "tar.gz"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    return ""


@dataclass
class Extracted:
    """What an extraction kept and left out. `digest` identifies the content (each kept file's path and
    sha256, each reject), not the archive's bytes: re-packing the same files (a new gzip timestamp,
    another format) gives the same digest."""

    rejected: list[Reject]
    files: int
    digest: str


class _Extraction:
    """Bookkeeping shared by the zip and tar walkers."""

    def __init__(self, dest: Path, limits: SourceLimits):
        self.dest = dest.resolve()
        self.limits = limits
        self.rejected: list[Reject] = []
        self.written: dict[str, str] = {}  # kept path -> sha256
        self.entries = 0
        self.declared_bytes = 0

    def result(self) -> Extracted:
        lines = sorted(f"file {key} {sha}" for key, sha in self.written.items())
        lines += sorted(f"reject {r.path} {r.reason}" for r in self.rejected)
        digest = hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()
        # Entry names that are not UTF-8 are extracted as they are (the folder walk rejects them, telling a
        # label folder from a file and seeing through a wrapper folder); the entries left out here are
        # listed under a printable name.
        rejected = [Reject(printable(r.path), printable(r.reason)) for r in self.rejected]
        return Extracted(rejected, len(self.written), digest)

    def count(self, declared_size: int) -> None:
        self.entries += 1
        if self.entries > self.limits.max_files:
            raise ResourceExhausted(f"the archive has more than {self.limits.max_files} entries")
        self.declared_bytes += max(0, declared_size)
        if self.declared_bytes > self.limits.max_total_bytes:
            raise ResourceExhausted(f"the archive expands to more than {self.limits.max_total_bytes} bytes")

    def target(self, name: str) -> Path | None:
        """The destination of entry `name`, or None (with the reject recorded) when it is not safe."""
        problem = _unsafe(name)
        if problem:
            self.rejected.append(Reject(name, problem))
            return None
        try:
            os.fsencode(name)
        except UnicodeEncodeError:  # a surrogate that stands for no byte: no file can have this name
            self.rejected.append(Reject(name, name_problem("", name)))
            return None
        parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
        if not parts:
            return None  # the archive's root folder itself
        target = self.dest.joinpath(*parts)
        if not target.resolve().is_relative_to(self.dest):  # defence in depth: nothing leaves dest
            self.rejected.append(Reject(name, f"{UNSAFE_PATH}: resolves outside the dataset"))
            return None
        return target

    def write(self, name: str, target: Path, source, declared: int) -> None:
        key = target.relative_to(self.dest).as_posix()
        if key in self.written:
            self.rejected.append(Reject(name, f"{DUPLICATE_ENTRY}: the archive holds this path more than once; "
                                              f"the first copy is kept"))
            return
        if declared > self.limits.max_file_bytes:
            self.rejected.append(Reject(name, f"{TOO_LARGE}: {declared} bytes is over the limit of "
                                              f"{self.limits.max_file_bytes} per file"))
            return
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.parent.resolve().is_relative_to(self.dest):
                raise OSError("parent folder resolves outside the dataset")
            sha = hashlib.sha256()
            with source() as src, open(target, "xb") as out:
                written = 0
                while chunk := src.read(_COPY_CHUNK):
                    written += len(chunk)
                    if written > declared or written > self.limits.max_file_bytes:
                        raise _Oversized()
                    sha.update(chunk)
                    out.write(chunk)
        except _Oversized:
            target.unlink(missing_ok=True)
            self.rejected.append(Reject(name, f"{CORRUPT_ENTRY}: holds more data than its header declares"))
            return
        except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, UnicodeDecodeError) as exc:
            target.unlink(missing_ok=True)
            if isinstance(exc, OSError) and exc.errno in _LOCAL_DISK_ERRORS:
                raise  # the service's disk, not the entry
            self.rejected.append(Reject(name, f"{CORRUPT_ENTRY}: cannot be extracted: {exc}"))
            return
        self.written[key] = sha.hexdigest()


class _Oversized(Exception):
    pass


def extract_archive(archive: Path, fmt: str, dest: Path, limits: SourceLimits = DEFAULT_LIMITS,
                    field_name: str = "archive_format") -> Extracted:
    """Extracts the safe entries of `archive` into `dest` (created); returns the entries left out and
    a digest of the content. InvalidArgument(field_name) when the file is not an archive of `fmt`."""
    if fmt not in ARCHIVE_FORMATS:
        raise InvalidArgument(field_name, f"unknown archive format {fmt!r}; expected one of {ARCHIVE_FORMATS}")
    dest.mkdir(parents=True, exist_ok=True)
    job = _Extraction(dest, limits)
    actual = detect_archive_format(archive)
    if actual != fmt and not (fmt == "tar" and actual == "" and archive.stat().st_size > 0):
        raise InvalidArgument(field_name, f"the data is not a {fmt} archive"
                                          + (f" (it looks like {actual})" if actual else ""))
    try:
        if fmt == "zip":
            _extract_zip(archive, job)
        else:
            _extract_tar(archive, "r:gz" if fmt == "tar.gz" else "r:", job)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError, UnicodeDecodeError) as exc:
        if isinstance(exc, OSError) and exc.errno in _LOCAL_DISK_ERRORS:
            raise  # a local disk problem, not the upload's fault
        raise InvalidArgument(field_name, f"the {fmt} archive is damaged or incomplete: {exc}") from None
    return job.result()


def _extract_zip(archive: Path, job: _Extraction) -> None:
    with contextlib.ExitStack() as stack:
        zf, misflagged = _open_zip(archive, stack)
        for index, info in enumerate(zf.infolist()):
            job.count(info.file_size)
            name = info.filename
            if index in misflagged:  # zipfile decoded its bytes as cp437; they are kept as they are, escaped
                name = name.encode("cp437").decode("utf-8", "surrogateescape")
            mode = info.external_attr >> 16
            if info.create_system == 3 and mode:  # unix attributes recorded
                if stat.S_ISLNK(mode):
                    job.rejected.append(Reject(name, f"{LINK}: symbolic links are not extracted"))
                    continue
                if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
                    job.rejected.append(Reject(name, f"{SPECIAL_FILE}: {_kind(mode)} entries are not extracted"))
                    continue
            target = job.target(name)
            if target is None:
                continue
            if info.is_dir():
                _mkdir(job, name, target)
                continue
            if info.flag_bits & 0x1:
                job.rejected.append(Reject(name, f"{ENCRYPTED}: password-protected entries are not supported"))
                continue
            job.write(name, target, lambda info=info: zf.open(info), info.file_size)


# Bit 11 of an entry's 16-bit little-endian flags says its name is UTF-8: bit 3 of the flags' second byte.
_UTF8_FLAG = 0x800
_UTF8_FLAG_HIGH_BYTE = 0x08


def _open_zip(archive: Path, stack: contextlib.ExitStack) -> tuple[zipfile.ZipFile, set[int]]:
    """The archive, open, and the indices of its entries whose names are flagged as UTF-8 but are not.

    zipfile refuses a whole archive (UnicodeDecodeError) for one such name. The archive is then read
    through `_ClearedFlags`, which reads those entries' UTF-8 flags as clear: zipfile decodes their names
    as cp437, which never fails, and the caller turns them back into their bytes. Names without the
    flag are cp437 by the zip format, so they are always text and are used as zipfile decodes them."""
    try:
        return stack.enter_context(zipfile.ZipFile(archive)), set()
    except UnicodeDecodeError:
        pass
    file = _ClearedFlags(stack.enter_context(open(archive, "rb")))
    try:
        misflagged = _misflagged(file)
    except AttributeError:  # zipfile's helpers moved: the archive is refused whole, as zipfile does
        misflagged = []
    for _, flags_at in misflagged:
        file.clear(flags_at)
    zf = stack.enter_context(zipfile.ZipFile(file))
    infos = zf.infolist()
    for index, _ in misflagged:
        if index < len(infos):  # and the local header's flags: zf.open() decodes the name there again
            file.clear(infos[index].header_offset + 7)
    return zf, {index for index, _ in misflagged}


def _misflagged(file: _ClearedFlags) -> list[tuple[int, int]]:
    """(index, offset of the flags' second byte) of each central directory record flagged as UTF-8 whose
    name is not UTF-8. Finds the central directory as zipfile does (with its own helper and layout)."""
    endrec = zipfile._EndRecData(file)
    if not endrec:
        return []  # zipfile will say that this is no zip file
    size = endrec[zipfile._ECD_SIZE]
    start = endrec[zipfile._ECD_LOCATION] - size  # where zipfile finds it, archives with a prefix included
    if endrec[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:
        start -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator
    if start < 0:
        return []
    file.seek(start)
    data = file.read(size)
    found, pos, index = [], 0, 0
    while pos + zipfile.sizeCentralDir <= len(data):
        record = struct.unpack_from(zipfile.structCentralDir, data, pos)
        if record[zipfile._CD_SIGNATURE] != zipfile.stringCentralDir:
            break  # damaged: zipfile will say so
        name_at = pos + zipfile.sizeCentralDir
        name = data[name_at:name_at + record[zipfile._CD_FILENAME_LENGTH]]
        if record[zipfile._CD_FLAG_BITS] & _UTF8_FLAG and _utf8_or_none(name) is None:
            found.append((index, start + pos + 9))
        pos = (name_at + record[zipfile._CD_FILENAME_LENGTH] + record[zipfile._CD_EXTRA_FIELD_LENGTH]
               + record[zipfile._CD_COMMENT_LENGTH])
        index += 1
    return found


class _ClearedFlags:
    """A file read with the UTF-8 flag bit cleared in the bytes at some offsets (see _open_zip)."""

    def __init__(self, file: BinaryIO):
        self._file = file
        self._offsets: list[int] = []  # sorted

    def clear(self, offset: int) -> None:
        bisect.insort(self._offsets, offset)

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def read(self, size: int = -1) -> bytes:
        start = self._file.tell()
        data = self._file.read(size)
        first = bisect.bisect_left(self._offsets, start)
        last = bisect.bisect_left(self._offsets, start + len(data))
        if first == last:
            return data
        patched = bytearray(data)
        for offset in self._offsets[first:last]:
            patched[offset - start] &= ~_UTF8_FLAG_HIGH_BYTE & 0xFF
        return bytes(patched)


def _extract_tar(archive: Path, mode: str, job: _Extraction) -> None:
    with tarfile.open(archive, mode) as tar:
        for member in _members(tar):
            job.count(member.size if member.isfile() else 0)
            name = member.name
            if member.issym():
                job.rejected.append(Reject(name, f"{LINK}: symbolic link to {member.linkname!r} is not extracted"))
                continue
            if member.islnk():
                job.rejected.append(Reject(name, f"{LINK}: hard link to {member.linkname!r} is not extracted"))
                continue
            if not (member.isfile() or member.isdir()):
                what = ("character device" if member.ischr() else "block device" if member.isblk()
                        else "FIFO" if member.isfifo() else f"type {member.type!r}")
                job.rejected.append(Reject(name, f"{SPECIAL_FILE}: {what} entries are not extracted"))
                continue
            target = job.target(name)
            if target is None:
                continue
            try:  # the standard library's own judgement, on top of ours (PEP 706)
                tarfile.data_filter(member, str(job.dest))
            except tarfile.FilterError as exc:
                job.rejected.append(Reject(name, f"{UNSAFE_PATH}: {exc}"))
                continue
            if member.isdir():
                _mkdir(job, name, target)
                continue
            job.write(name, target, lambda member=member: _opened(tar, member), member.size)


def _opened(tar: tarfile.TarFile, member: tarfile.TarInfo):
    handle = tar.extractfile(member)
    if handle is None:  # pragma: no cover - only for non-files, filtered above
        raise tarfile.TarError("no data")
    return handle


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """Members one by one as the stream is read (tar.getmembers() would hold them all)."""
    while (member := tar.next()) is not None:
        yield member
        tar.members = []  # tarfile keeps every member seen; the walk does not need them


def _mkdir(job: _Extraction, name: str, target: Path) -> None:
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        job.rejected.append(Reject(name, f"{CORRUPT_ENTRY}: cannot be extracted: {exc}"))


def _kind(mode: int) -> str:
    for test, word in ((stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return word
    return "special"


def archive_root(root: Path, list_file: str = "") -> Path:
    """Where an extracted archive's data starts: `root` when the list file is found there as named,
    otherwise the folder `unwrap` finds."""
    if list_file and not _unsafe(list_file) and (root / list_file).is_file():
        return root
    return unwrap(root)


def unwrap(root: Path) -> Path:
    """Archives often hold one folder that holds the label folders (`zip -r cats.zip cats/`): while
    `root` holds nothing but one folder, and that folder has folders inside, descend into it."""
    while True:
        entries = [e for e in os.scandir(root) if not _is_junk(e.name)]
        if len(entries) != 1 or not entries[0].is_dir(follow_symlinks=False):
            return root
        inner = Path(entries[0].path)
        if not any(e.is_dir(follow_symlinks=False) and not _is_junk(e.name) for e in os.scandir(inner)):
            return root
        root = inner


# --------------------------------------------------------------------------- a local source, whatever its form

_TEXT_SNIFF_BYTES = 4096


def archive_format_of(path: Path) -> str:
    """"zip", "tar.gz" or "tar" from the content; an old-style tar without the ustar magic is known by
    its suffix; "" when the file is no archive."""
    return detect_archive_format(path) or ("tar" if path.suffix.lower() == ".tar" else "")


def local_source_kind(path: Path, field_name: str = "source") -> str:
    """What a local source is: "folder", "archive" or "list" (a list file). InvalidArgument(field_name)
    naming the path when it does not exist or is a file that is neither an archive nor text (a list
    file's header is judged when it is read, by collect_list_file)."""
    if path.is_dir():
        return "folder"
    if not path.exists():
        raise InvalidArgument(field_name, f"{path} does not exist")
    if not path.is_file():
        raise InvalidArgument(field_name, f"{path} is neither a folder nor a regular file")
    try:
        if archive_format_of(path):
            return "archive"
        with open(path, "rb") as handle:
            head = handle.read(_TEXT_SNIFF_BYTES)
    except OSError as exc:
        raise InvalidArgument(field_name, f"{path} cannot be read: {exc.strerror}") from None
    # A cut at the sniff's end may split a character: only the bytes before the last 3 must decode.
    if b"\x00" in head or _utf8_or_none(head[:-3] if len(head) == _TEXT_SNIFF_BYTES else head) is None:
        raise InvalidArgument(field_name, f"{path} is neither a folder, a list file (text, first line a header "
                                          f"such as 'path label') nor a .zip/.tar/.tar.gz archive")
    return "list"


@dataclass
class LocalSource:
    """A local source made ready to collect from: the folder holding the label folders (or `list_file`)."""

    root: Path
    list_file: str
    kind: str  # "folder", "archive" or "list"
    archive_format: str = ""
    rejected: list[Reject] = field(default_factory=list)  # archive entries left out
    # The folders the walk may read: the allowed roots for a folder or list file, the extraction folder
    # for an archive (whose links were never extracted).
    roots: LocalRoots = field(default_factory=lambda: LocalRoots([]))


def open_local_source(path: Path, list_file: str, work: Path, *, limits: SourceLimits = DEFAULT_LIMITS,
                      field_name: str = "source", list_file_field: str = "source.list_file",
                      roots: LocalRoots | None = None) -> LocalSource:
    """A folder per label (or holding `list_file`), a list file, or a .zip/.tar/.tar.gz archive of
    either, as a folder to collect from. Archives are extracted (safely, see extract_archive) under
    `work`, which must outlive the use of the result. The one way every entry point (`dataset prepare`,
    `run`, a job's local_path) reads a local source. Symbolic links in a folder are followed only inside
    `roots` (default: the source's own folder); the caller has checked that `path` lies in them."""
    kind = local_source_kind(path, field_name)
    if kind == "folder":
        return LocalSource(path, list_file, kind, roots=roots if roots is not None else LocalRoots([path]))
    if kind == "archive":
        fmt = archive_format_of(path)
        extracted = extract_archive(path, fmt, work / "files", limits, field_name=field_name)
        return LocalSource(archive_root(work / "files", list_file), list_file, kind, fmt, extracted.rejected,
                           roots=LocalRoots([work / "files"]))
    if list_file:
        raise InvalidArgument(list_file_field, f"{path} is itself a list file; name a list file only inside a "
                                               f"folder or archive source (got {list_file!r})")
    # a list file's paths are relative to its folder
    return LocalSource(path.parent, path.name, kind, roots=roots if roots is not None else LocalRoots([path.parent]))


# --------------------------------------------------------------------------- object store


def download_prefix(store: ObjectStore, prefix: str, dest: Path, limits: SourceLimits = DEFAULT_LIMITS,
                    threads: int = 8) -> list[Reject]:
    """Copies every object under `prefix` (a "folder": '/' is appended when missing) into `dest`,
    keeping the relative keys as paths. Returns the objects left out (too large, corrupted)."""
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    dest.mkdir(parents=True, exist_ok=True)
    rejected: list[Reject] = []
    wanted: list[tuple[str, Path]] = []
    total = 0
    for count, info in enumerate(store.list(prefix), 1):
        if count > limits.max_files:
            raise ResourceExhausted(f"more than {limits.max_files} objects under {prefix!r}")
        rel = info.key[len(prefix):]
        folder, _, name = rel.rpartition("/")
        if problem := name_problem(folder, name):  # a local store lists such keys but cannot read them
            rejected.append(Reject(printable(rel), problem))
            continue
        if info.size > limits.max_file_bytes:
            rejected.append(Reject(rel, f"{TOO_LARGE}: {info.size} bytes is over the limit of "
                                        f"{limits.max_file_bytes} per file"))
            continue
        total += info.size
        if total > limits.max_total_bytes:
            raise ResourceExhausted(f"the objects under {prefix!r} hold more than {limits.max_total_bytes} bytes")
        wanted.append((info.key, dest / rel))

    def fetch(item: tuple[str, Path]) -> Reject | None:
        key, path = item
        try:
            store.get_file(key, path)
        except ObjectCorrupted as exc:
            return Reject(key[len(prefix):], f"{CORRUPT_ENTRY}: {exc.message}")
        return None

    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="ingest-download") as pool:
        rejected.extend(r for r in pool.map(fetch, wanted) if r is not None)
    return rejected


