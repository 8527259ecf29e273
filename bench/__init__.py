"""Reproducible benchmarks: `python -m bench SCENARIO --json` prints one JSON object last."""
