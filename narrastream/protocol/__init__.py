"""The protocol: aggregation formulas, pooling primitives and protocol versions."""
