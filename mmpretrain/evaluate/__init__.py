"""Evaluation metrics computed from embeddings (no Ray, no DeepSpeed)."""
