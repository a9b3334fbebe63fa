"""mmpretrain: distributed pretraining of fused image-text encoders.

Ray Data streams WebDataset shards, Ray Train runs the loop with DeepSpeed ZeRO, and the model is a
ResNet visual encoder, a BERT text encoder and a multi-head-attention fusion module.
"""

__version__ = "0.1.0"


def load_pretrained(path, device=None):  # -> mmpretrain.pretrained.PretrainedModel
    """An exported model for inference; see ``mmpretrain.pretrained.load_pretrained``.

    Imported lazily so ``import mmpretrain`` (the CLI's first step) stays free of torch.
    """
    from mmpretrain.pretrained import load_pretrained as _load

    return _load(path, device)
