"""cuse-lguest's benchmark suite: `python -m benchmarks [--only NAME] [--quick]`.

Speed is a goal of the project (docs/performance.md lists each one), but timing
assertions make flaky tests, so every speed figure lives here instead, measured
against a baseline in the same run and reported as a ratio with its spread.
Figures are plugins: one module per figure in benchmarks/figures/ (see figure.py).
"""
