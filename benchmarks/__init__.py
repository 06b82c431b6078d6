"""promstat benchmarks: standalone scripts (`python -m benchmarks.<name>`), each with `run()`."""
