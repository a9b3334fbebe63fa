"""Shards on disk, the synthetic data set, the tokenizer and the Ray Data pipeline.

Nothing here knows about the model: the pipeline hands the trainer uint8 images and token ids.
"""
