"""The records' wire formats, written without TensorFlow, checked against TensorFlow's own readers;
image header sniffing and re-encoding; build options and shard planning."""

import io
import math
import struct

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from services.common.errors import InvalidArgument
from services.common.records import example
from services.tfrecords.builder import BuildOptions, build_id_for, plan_shards, shard_name

CLASSES = [["cat", "dog", "bird"], ["indoor", "outdoor"]]


def _image(fmt: str, size=(7, 5), mode="RGB") -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(out, fmt)
    return out.getvalue()


def test_framed_records_are_read_back_by_tf_data_byte_for_byte(tmp_path):
    records = [b"", b"x", bytes(range(256)) * 40, b"\x00" * 70_000]
    path = tmp_path / "r.tfrecord"
    path.write_bytes(b"".join(example.frame(r) for r in records))
    assert [t.numpy() for t in tf.data.TFRecordDataset(str(path))] == records
    with open(path, "rb") as handle:
        assert list(example.iter_records(handle)) == records


def test_a_corrupted_record_is_detected_by_tensorflow_and_by_iter_records(tmp_path):
    framed = bytearray(example.frame(b"hello records"))
    framed[14] ^= 0xFF  # a data byte
    path = tmp_path / "bad.tfrecord"
    path.write_bytes(bytes(framed))
    with pytest.raises(tf.errors.DataLossError):
        list(tf.data.TFRecordDataset(str(path)))
    with open(path, "rb") as handle, pytest.raises(example.RecordError, match="checksum"):
        list(example.iter_records(handle))


def test_masked_crc_matches_tensorflow_framing(tmp_path):
    path = tmp_path / "tf.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(b"same bytes")
    assert path.read_bytes() == example.frame(b"same bytes")


@pytest.mark.parametrize("labels", [(2, 1), (0, -1), (-1, -1)])
def test_encoded_examples_equal_what_tensorflow_builds(labels):
    data = _image("PNG")
    ours = example.ExampleEncoder(CLASSES).encode(
        encoded=data, image_format="png", height=5, width=7, filename="images/ab/ab.png", source_id="ab" * 32,
        labels=labels)
    texts = [b"" if label == -1 else CLASSES[task][label].encode() for task, label in enumerate(labels)]
    expected = tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
        "image/format": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"png"])),
        "image/height": tf.train.Feature(int64_list=tf.train.Int64List(value=[5])),
        "image/width": tf.train.Feature(int64_list=tf.train.Int64List(value=[7])),
        "image/filename": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"images/ab/ab.png"])),
        "image/source_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"ab" * 32])),
        "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=list(labels))),
        "image/class/text": tf.train.Feature(bytes_list=tf.train.BytesList(value=texts)),
    }))
    assert tf.train.Example.FromString(ours) == expected
    parsed = tf.io.parse_single_example(ours, {
        "image/class/label": tf.io.FixedLenFeature([2], tf.int64),
        "image/encoded": tf.io.FixedLenFeature([], tf.string)})
    assert parsed["image/class/label"].numpy().tolist() == list(labels)
    assert parsed["image/encoded"].numpy() == data


@pytest.mark.parametrize("dhash", [0, 0x0123456789ABCDEF, 2**63, 2**64 - 1])
def test_image_dhash_is_an_int64_feature_as_tensorflow_writes_it(dhash):
    encoder = example.ExampleEncoder(CLASSES)
    fields = {"encoded": b"x", "image_format": "png", "height": 5, "width": 7, "filename": "f", "source_id": "ab",
              "labels": (1, 0)}
    ours = encoder.encode(**fields, dhash=dhash)
    signed = dhash - 2**64 if dhash >= 2**63 else dhash  # int64 two's complement
    expected = tf.train.Example.FromString(encoder.encode(**fields))
    expected.features.feature[example.DHASH].int64_list.value.append(signed)
    assert tf.train.Example.FromString(ours) == expected
    parsed = tf.io.parse_single_example(ours, {example.DHASH: tf.io.FixedLenFeature([], tf.int64)})
    assert int(parsed[example.DHASH].numpy()) & (2**64 - 1) == dhash
    assert example.DHASH not in tf.train.Example.FromString(encoder.encode(**fields)).features.feature
    with pytest.raises(ValueError, match="64-bit"):
        encoder.encode(**fields, dhash=2**64)


def test_large_images_get_multi_byte_lengths_right():
    data = bytes(300_000)
    ours = example.ExampleEncoder([["a"]]).encode(encoded=data, image_format="jpeg", height=70_000, width=1,
                                                  filename="f" * 200, source_id="s", labels=(0,))
    parsed = tf.train.Example.FromString(ours).features.feature
    assert parsed["image/encoded"].bytes_list.value == [data]
    assert parsed["image/height"].int64_list.value == [70_000]
    assert parsed["image/filename"].bytes_list.value == [b"f" * 200]


def test_labels_outside_the_classes_are_refused():
    encoder = example.ExampleEncoder(CLASSES)
    with pytest.raises(ValueError, match="class id 3 of task 0"):
        encoder.encode(encoded=b"", image_format="png", height=1, width=1, filename="f", source_id="s", labels=(3, 0))
    with pytest.raises(ValueError, match="1 labels for 2 tasks"):
        encoder.encode(encoded=b"", image_format="png", height=1, width=1, filename="f", source_id="s", labels=(0,))


@pytest.mark.parametrize("fmt, name, mode", [("PNG", "png", "RGB"), ("PNG", "png", "L"), ("JPEG", "jpeg", "RGB"),
                                             ("JPEG", "jpeg", "L"), ("GIF", "gif", "P"), ("BMP", "bmp", "RGB"),
                                             ("WEBP", "webp", "RGB")])
def test_image_info_reads_format_and_size_from_the_header(fmt, name, mode):
    data = _image(fmt, size=(13, 6), mode=mode)
    assert example.image_info(data) == (name, 6, 13)


def test_progressive_jpeg_and_exif_headers_are_sized_right():
    image = Image.fromarray(np.zeros((9, 21, 3), np.uint8))
    out = io.BytesIO()
    exif = Image.Exif()
    exif[0x010F] = "camera"
    image.save(out, "JPEG", progressive=True, exif=exif)
    assert example.image_info(out.getvalue()) == ("jpeg", 9, 21)


def test_image_info_refuses_what_is_not_an_image():
    with pytest.raises(ValueError, match="not a readable image"):
        example.image_info(b"this is text, not pixels")
    with pytest.raises(ValueError):
        example.image_info(b"\x89PNG\r\n\x1a\n" + b"\x00" * 4)  # a PNG signature and nothing after


@pytest.mark.parametrize("size", [(400, 100), (100, 400), (40, 30)])
def test_reencode_keeps_the_longer_side_within_max_side(size):
    data, height, width = example.reencode(_image("PNG", size=size), max_side=64, quality=80)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG" and image.size == (width, height)
        assert max(image.size) == min(64, max(size))
        assert abs(image.width / image.height - size[0] / size[1]) < 0.1  # aspect ratio kept


def test_reencode_keeps_greyscale_and_drops_alpha():
    data, _, _ = example.reencode(_image("PNG", size=(90, 90), mode="L"), max_side=32, quality=90)
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "L"
    data, _, _ = example.reencode(_image("PNG", size=(90, 90), mode="RGBA"), max_side=32, quality=90)
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "RGB"


def test_build_options_defaults_validation_and_ids():
    assert BuildOptions() == BuildOptions(shard_bytes=0, min_shards=0)
    assert BuildOptions(max_side=128).jpeg_quality == 90
    with pytest.raises(InvalidArgument, match="options.jpeg_quality: only applies when re-encoding"):
        BuildOptions(jpeg_quality=80)
    with pytest.raises(InvalidArgument, match="options.shard_bytes"):
        BuildOptions(shard_bytes=10)
    with pytest.raises(InvalidArgument, match="options.max_side"):
        BuildOptions(max_side=-1)
    with pytest.raises(InvalidArgument, match="options.jpeg_quality"):
        BuildOptions(max_side=10, jpeg_quality=101)
    assert build_id_for("ds", BuildOptions()) == build_id_for("ds", BuildOptions(shard_bytes=0))
    ids = {build_id_for("ds", o) for o in (BuildOptions(), BuildOptions(max_side=64), BuildOptions(min_shards=3),
                                         BuildOptions(max_side=64, jpeg_quality=70))}
    assert len(ids) == 4 and all(i.startswith("ds-") and len(i) == 13 for i in ids)
    assert shard_name("train", 3, 12) == "train-00003-of-00012.tfrecord"


@pytest.mark.parametrize("sizes, shard_bytes, min_shards", [
    ([100] * 1000, 10_000, 1), ([100] * 1000, 10_000, 25), ([5000, 1, 1, 1, 5000, 1], 100, 1),
    ([7] * 3, 1, 8), ([10 ** 6] + [10] * 500, 2000, 4), ([], 100, 4)])
def test_shard_plans_are_contiguous_balanced_by_bytes_and_never_empty(sizes, shard_bytes, min_shards):
    plan = plan_shards(sizes, shard_bytes, min_shards)
    if not sizes:
        assert plan == []
        return
    assert plan[0][0] == 0 and plan[-1][1] == len(sizes)
    assert all(a < b for a, b in plan) and all(p[1] == q[0] for p, q in zip(plan, plan[1:], strict=False))
    assert len(plan) == min(len(sizes), max(min_shards, math.ceil(sum(sizes) / shard_bytes)))
    target = sum(sizes) / len(plan)
    for a, b in plan:  # each shard within one example of the even share
        assert sum(sizes[a:b]) <= target + max(sizes[a:b])


def test_negative_varints_are_ten_bytes_as_protobuf_writes_them():
    assert example._varint(-1) == b"\xff" * 9 + b"\x01"
    assert struct.unpack("<Q", struct.pack("<q", -1))[0] == 2**64 - 1
