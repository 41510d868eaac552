"""continual_trainer: trains one data batch of a continual LoRA run, with exact resume."""
