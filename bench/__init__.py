"""Benchmark scripts: step time, adapter init time, GLUE epoch (see bench/*.py)."""
