"""Benchmarks: each module measures one part of dataward against a baseline run in the same process.

Run them all with ``python -m bench.run_all`` (results in ``.cache/bench/latest.json``) or one with
``python -m bench.<name>``. See docs/performance.md for what each measures and the numbers.
"""
