"""The audit: typed state, stages and their loop, profiles and model pre-flight."""
