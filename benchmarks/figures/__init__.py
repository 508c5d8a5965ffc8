"""One module per figure.  Each defines NAME, SUMMARY and `run(ctx) -> list[Measurement]`
(benchmarks.figure); `python -m benchmarks` finds them here by module name."""
