"""The benchmark suite, run end to end at its smoke size."""
