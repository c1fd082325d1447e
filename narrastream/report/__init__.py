"""Leaderboards (CSV and Markdown) built from run records, with the published reference rows."""

from narrastream.report.leaderboard import build_leaderboard, load_reference, write_leaderboard

__all__ = ["build_leaderboard", "load_reference", "write_leaderboard"]
