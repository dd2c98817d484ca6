"""One-command benchmarks (`make bench`); importable so qcluster workers can run `bench.tasks`."""
