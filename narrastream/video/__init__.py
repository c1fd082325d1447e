"""Video I/O: the only package that decodes. Decode once, segment, sample frames for metrics."""
