"""Benchmarks against a peer where there is one.

Run from the repository root as `python -m bench.NAME` (they use the tests' fixtures).
"""
