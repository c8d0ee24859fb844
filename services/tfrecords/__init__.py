"""The tfrecords service: prepared datasets (datasets/<id>/) into sharded TFRecords (records/<build_id>/),
and the reader the trainer and evaluator use (services.tfrecords.reader)."""
