"""Synthetic-speech detectors: features, models and ASVspoof-style metrics (a leaf package)."""
