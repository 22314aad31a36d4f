"""ranlib's benchmarks (``python -m ranlib.bench``): one module per measurement, each printing
its figures and writing them under ``results/performance/``.

It may import ``ranlib.models``, ``ranlib.data``, ``ranlib.training`` and the shared top-level
modules, never ``study`` or ``campaign`` (``tests/test_layout.py``).
"""
