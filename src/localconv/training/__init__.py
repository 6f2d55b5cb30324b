"""Training: engine, recipes, optimizer, schedules, EMA, checkpoints, evaluation."""
