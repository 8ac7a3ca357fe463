"""Runnable load and quality benchmarks; each writes ``bench/results/<name>.json``."""

from pathlib import Path

#: Where results (JSON and their PNG plots) are written and read by default. Here, not in
#: ``bench.common``, because both ``common`` (writing) and ``plots`` (drawing) need it and
#: ``common`` calls ``plots``.
RESULTS_DIR = Path(__file__).resolve().parent / "results"
