"""A scoring run: run directory, generator plug-ins, the generate/score pipeline, merge and summary."""
