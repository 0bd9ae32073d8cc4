"""What scores an utterance: ASR, WER, speaker similarity, quality, flags, statistics."""
