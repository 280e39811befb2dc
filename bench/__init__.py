"""Benchmarks, one module per capability: ``python -m bench`` runs them all, in turn.

Each module runs alone as ``python -m bench.<name>``, compares against a named baseline
with paired, interleaved rounds, and prints medians and ratios. docs/benchmarks.md
records the figures.
"""
