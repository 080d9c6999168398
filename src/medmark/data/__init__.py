"""Data stages: synthetic generator, ingest, splits, preprocessing to HDF5."""
