"""Language-model layer: the model, sampling, checkpoints, schedules and training."""
