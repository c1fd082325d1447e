"""The protocol layer: narrative annotations, the official aggregation formulas, protocol versions.

``pooling`` holds the shared aggregation primitives of the official evaluator as pure functions,
so every metric pools its per-segment and per-transition values the same way.
"""
