"""Benchmarks, one module per service: ``python -m scripts.bench.<service> --help``."""
