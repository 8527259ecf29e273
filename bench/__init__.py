"""Reproducible benchmarks: `python -m bench <scenario> [--json] [--quick]`."""
