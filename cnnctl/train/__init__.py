"""Training: the plan, the trainer (setup -> fit -> checkpoints), the epoch loop (engine) and what it uses."""
