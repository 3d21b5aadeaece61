"""Benchmark scripts: each prints its numbers and saves them (JSON + Markdown) under an output folder."""
