"""The records contract: what the tfrecords service writes and the trainer and the evaluator read,
shared here so that no service imports another.

- `example`: the tf.train.Example features and the TFRecord framing, written without TensorFlow;
- `reader`: a build (`records/<build_id>/`, its manifest.json written last) as a tf.data.Dataset.

This package imports neither: the builder's worker processes import only `example` and start fast.
"""

FORMAT = "classforge-records/1"  # part of every build id: a change of the Example layout means new ids
SPLITS = ("train", "val", "test")
