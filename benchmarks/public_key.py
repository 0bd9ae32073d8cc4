"""Public benchmark watermark keys: rebuilt from their name, so a benchmark's rerun repeats its marks.

On half-intelligible clones the keyed mark alone changes most of Whisper's transcripts, so a fresh
random key per run moves the WER by several points (README, "Demo checkpoint"). These keys are for
measurements only: anyone can rebuild them, so they are never product keys.
"""

from __future__ import annotations

import hashlib

from watermark.keys import WatermarkKey


def public_key(name: str) -> WatermarkKey:
    """The key with id ``name`` and secret sha256(``name``)."""
    return WatermarkKey(name, hashlib.sha256(name.encode()).digest())
