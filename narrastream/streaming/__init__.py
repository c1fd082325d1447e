"""Native block-autoregressive, KV-cached Wan2.1 backbone (IAMFlow / MemFlow / LongLive / Self-Forcing)."""
