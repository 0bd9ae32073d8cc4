"""Scorecards rendered from result tables; imports none of the model packages."""
