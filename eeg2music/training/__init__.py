"""Training on HF accelerate: settings, data, objectives, checkpoints, the contrastive alignment and the loop."""
