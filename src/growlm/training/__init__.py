"""Training: the typed plan, stages, the one optimisation loop, growth runs, fine-tuning, checkpoints, parallelism,
run directories, metrics and FLOP budgets."""
