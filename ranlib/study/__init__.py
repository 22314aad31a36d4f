"""ranlib's study layer: the paper's numbers (``paper``), the experiments as data (``experiments``),
planning their runs (``planning``), the verdict rules (``verdicts``), how a table is shown
(``tables``), the chapters' tables (``report``, ``imagewoof``), model counts (``complexity``), the
benchmarks' figures (``performance``), what the study cost (``compute``, ``ledger``), how a number is
labelled (``labels``), where the study stands (``status``), the figures (``plots``) and the measured
cost of the JPEG copy (``jpeg_gap``).

It may import ``ranlib.models``, ``ranlib.data``, ``ranlib.training`` and the shared top-level
modules, never ``campaign`` or ``bench`` (``tests/test_layout.py``).
"""
