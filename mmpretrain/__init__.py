"""mmpretrain: distributed pretraining of fused image-text encoders.

Ray Data streams WebDataset shards, Ray Train runs the loop with DeepSpeed ZeRO, and the model is a
ResNet visual encoder, a BERT text encoder and a multi-head-attention fusion module.
"""

__version__ = "0.1.0"
