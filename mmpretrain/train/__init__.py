"""Where model, data and Ray meet: the per-worker loop, DeepSpeed, checkpoints, TorchTrainer."""
