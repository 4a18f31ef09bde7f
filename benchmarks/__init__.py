"""Reproducible benchmarks against peers; ``python -m benchmarks`` writes BENCHMARKS.md."""
