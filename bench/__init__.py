"""Benchmarks: `make bench` (full sizes) or `make bench QUICK=1` (under a minute). One table."""
