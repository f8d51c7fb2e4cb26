"""Training: stage-1 encoder pretraining and ELM training in every paradigm, with accelerate."""
