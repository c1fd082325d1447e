"""Instruction-dimension metrics: does the video follow its script (dynamic trajectory, ...)."""
