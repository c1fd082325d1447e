"""The harness: turns a config into stages (generate, evaluate, leaderboard) over a shard of items."""

from narrastream.harness.session import Session, StageSummary

__all__ = ["Session", "StageSummary"]
