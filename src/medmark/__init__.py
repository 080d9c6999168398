"""medmark: dataset ownership verification for medical images (X-Mark, MedLocker, baselines)."""

__version__ = "0.1.0"
