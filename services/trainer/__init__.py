"""The trainer service: TFRecords in, a SavedModel (and history, curves, checkpoints) out."""
