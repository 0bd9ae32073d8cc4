"""Scorecards rendered from result tables; imports none of the model packages.

``write_scorecard(run_dir)`` writes ``scorecard.json`` / ``scorecard.md`` / ``scorecard.html`` into an
audit run directory; ``build_scorecard(run_dir)`` returns the dict (schema: :mod:`reports.scorecard`).
"""

from reports.scorecard import FORMAT, SCHEMA_VERSION, build_scorecard, write_scorecard

__all__ = ["FORMAT", "SCHEMA_VERSION", "build_scorecard", "write_scorecard"]
