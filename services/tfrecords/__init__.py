"""The tfrecords service: prepared datasets (datasets/<id>/) into sharded TFRecords (records/<build_id>/),
read by the trainer and the evaluator through the shared contract in services/common/records/."""
