"""Watermarking methods (X-Mark; MedLocker and baselines plug into the same stages)."""
