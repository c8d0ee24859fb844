"""The records build's compact per-line state (#19 item 4): EntryList and DigestTable read like the list
of entries and the dict they replace, and stay small per image, so a build's memory stays flat."""

from __future__ import annotations

import hashlib
import tracemalloc

import pytest

from services.common import image_hash
from services.common.storage import LocalObjectStore
from services.tfrecords.builder import _ImageSizes
from services.tfrecords.dataset import DatasetError, DigestTable, Entry, EntryList, load_dataset, parse_list
from tests.unit.test_tfrecords_reader import RemoteStore


def _key(n: int, ext: str = "png") -> str:
    sha = hashlib.sha256(str(n).encode()).hexdigest()
    return f"images/{sha[:2]}/{sha}.{ext}"


def test_an_entry_list_gives_back_every_line_as_it_was_added():
    lines = [Entry(_key(1), (0,)), Entry(_key(2, "jpg"), (1, -1)), Entry("images/not-by-content.png", (0,)),
             Entry(_key(1), (0,))]  # an oversampled line repeats an image
    entries = EntryList(lines)
    assert list(entries) == lines and len(entries) == 4
    assert entries[-1] == lines[-1] and entries[1:3] == lines[1:3]
    assert entries.digest(0) == bytes.fromhex(_key(1)[10:74]) and entries.digest(2) is None
    assert entries.label_counts() == {(0,): 3, (1, -1): 1}
    with pytest.raises(IndexError):
        entries[4]


def test_parse_list_reads_line_by_line_like_splitlines():
    text = f"{_key(1)} 0\r\n\n{_key(2)} 1\n".encode()
    entries = parse_list(text, "train.list", [["a", "b"]])
    assert list(entries) == [Entry(_key(1), (0,)), Entry(_key(2), (1,))]
    with pytest.raises(DatasetError, match="line 3"):  # the empty line counts
        parse_list(f"{_key(1)} 0\n\nbad\n".encode(), "train.list", [["a", "b"]])
    with pytest.raises(DatasetError, match="not UTF-8"):
        parse_list(b"\xff\xfe 0\n", "train.list", [["a", "b"]])


def test_a_digest_table_finds_values_added_in_any_order():
    table = DigestTable()
    digests = [hashlib.sha256(str(n).encode()).digest() for n in range(50)]
    for n, digest in reversed(list(enumerate(digests))):
        table.add(digest, n)
    table.add(digests[7], 700)  # added twice: the last value counts, as in a dict
    assert [table.get(d) for d in digests] == [700 if n == 7 else n for n in range(50)]
    assert table.get(hashlib.sha256(b"absent").digest()) is None and len(DigestTable()) == 0
    with pytest.raises(ValueError, match="32 bytes"):
        table.add(b"short", 1)


def test_the_remote_sizes_tell_an_image_stored_under_another_extension_missing(tmp_path):
    local = LocalObjectStore(tmp_path)
    for key, data in ((_key(1), b"one"), (_key(2, "jpg"), b"two!"), ("images/free-name.png", b"three")):
        local.put_bytes(f"datasets/d/{key}", data)
    entries = EntryList([Entry(_key(1), (0,)), Entry(_key(2, "png"), (0,)), Entry("images/free-name.png", (0,))])

    class _Dataset:
        prefix = "datasets/d"

    with _ImageSizes(RemoteStore(local), _Dataset()) as sizes:
        assert [sizes.of(entries, i, entries.key(i)) for i in range(3)] == [3, None, 5]


def test_a_loaded_dataset_holds_under_120_bytes_a_line(tmp_path):
    """The whole per-line state of a build's input (lists and hashes) at 20,000 images: EntryList and
    DigestTable take ~85 bytes a line together (arrays' growth room included); the list of Entry
    tuples and the dict they replaced took ~400."""
    count = 20_000
    store = LocalObjectStore(tmp_path)
    keys = [_key(n) for n in range(count)]
    store.put_bytes("datasets/big/labels.json", b'{"tasks": [{"name": "label", "classes": ["a", "b"]}]}')
    store.put_bytes("datasets/big/train.list", "".join(f"{k} {n % 2}\n" for n, k in enumerate(keys)).encode())
    store.put_bytes(f"datasets/big/{image_hash.HASHES_FILE}",
                    image_hash.format_hashes((k[10:74], n) for n, k in enumerate(keys)).encode())
    store.put_bytes("datasets/big/manifest.json", b"{}")
    del keys
    tracemalloc.start()
    try:
        dataset = load_dataset(store, "big")
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(dataset.splits["train"]) == count and len(dataset.hashes) == count
    assert held / count < 120, f"{held / count:.0f} bytes a line"
