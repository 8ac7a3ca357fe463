"""Runnable load and quality benchmarks; each writes ``bench/results/<name>.json``."""
