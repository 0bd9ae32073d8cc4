"""Watermark backends, keyed payloads, signed provenance and the attack bank (a leaf package)."""
