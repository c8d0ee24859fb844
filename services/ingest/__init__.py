"""Ingest: turns a folder of labelled images (or a list file, an archive, an object-store prefix)
into a validated, de-duplicated, split and balanced dataset in the object store (issue #3)."""
