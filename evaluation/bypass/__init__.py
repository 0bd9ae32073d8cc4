"""Voice-authentication bypass: ASV trials, thresholds, report."""
