"""Scripts that print numbers (`python -m benchmarks.data`, `benchmarks.train_step`,
`benchmarks.serve`, `benchmarks.checkpoint_io`), their fixture writers and the PyTorch
re-implementation of the reference, run from a checkout: not part of the installed package."""
