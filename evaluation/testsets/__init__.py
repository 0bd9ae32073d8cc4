"""Test sets: building, the committed demo set, detector data sources."""
