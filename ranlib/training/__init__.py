"""ranlib's training layer: the paper's recipes and the profiles that scale them, a run's
configuration, the one training loop and its step, evaluation, runtime and devices, checkpoints,
results files and their provenance.

It may import ``ranlib.models``, ``ranlib.data`` and the shared top-level modules, never
``study``, ``campaign`` or ``bench`` (``tests/test_layout.py``).
"""
