"""Scorers (WER, speaker similarity, loops, quality, voice-auth bypass) and run pipelines."""
