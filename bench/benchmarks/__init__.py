"""Benchmark scripts (not tests): timings of the harness against reference tools and raw model cost."""
