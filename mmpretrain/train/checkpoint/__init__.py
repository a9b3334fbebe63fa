"""A run's checkpoints, from saving them to handing their weights to others.

``save``: every rank's DeepSpeed shard plus the TrainState, reported to Ray Train; the resume
choice and restore. ``manifest``: what makes a checkpoint complete. ``reshard``: a checkpoint
resumed on another world size or ZeRO stage. ``consolidate``: plain weights from a run, a
checkpoint or an export, without Ray or DeepSpeed (inference imports only this and
``manifest``). ``export``: one safetensors file for sharing. ``log_sync``: a run's logs kept
beside its checkpoints on object stores.
"""
