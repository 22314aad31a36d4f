"""ranlib's benchmarks (``python -m ranlib.bench``, its command line in ``cli``): one module per
measurement, each printing its figures and writing them under ``results/performance/``: the
training step against a plain port (``step``), the profiler's breakdown (``profile``), several
trainings at once (``concurrent``), fused populations (``fused``) and their per-layer alternatives
(``layers``), and the CPU's figures (``cpu``).

It may import ``ranlib.models``, ``ranlib.data``, ``ranlib.training`` and the shared top-level
modules, never ``study`` or ``campaign`` (``tests/test_layout.py``).
"""
