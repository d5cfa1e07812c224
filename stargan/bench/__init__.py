"""Benchmarks that write JSON (``stargan bench ...``)."""
