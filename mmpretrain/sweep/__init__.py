"""Ray Tune sweeps over whole mmpretrain runs: specs (``tune/*.yaml``), the trial function,
the driver that runs or continues a sweep, and its results.

Importing this package imports no Ray; ``driver`` and ``trial`` do.
"""
