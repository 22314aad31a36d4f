"""ranlib's study layer: the paper's numbers, the experiments as data, planning their runs,
verdicts, the book's tables and plots, the ledgers of what each run cost, and the measured cost of
the JPEG copy.

It may import ``ranlib.models``, ``ranlib.data``, ``ranlib.training`` and the shared top-level
modules, never ``campaign`` or ``bench`` (``tests/test_layout.py``).
"""
