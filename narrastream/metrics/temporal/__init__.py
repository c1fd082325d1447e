"""Temporal-dimension metrics: boundary smoothness, conditional adjacent and long-range consistency."""
