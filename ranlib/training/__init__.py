"""ranlib's training layer: the paper's recipes and the profiles that scale them (``recipes``), a
run's configuration and its checks (``config``), the train command's flags (``flags``), the one
training loop (``loop``) and its step (``step``), evaluation and trained checkpoints
(``evaluation``), a run's data (``splits``), runtime and devices (``runtime``), the CPU's batch
(``cpu_batch``), checkpoints (``checkpoint``), results files (``results``) and their provenance
(``provenance``).

It may import ``ranlib.models``, ``ranlib.data`` and the shared top-level modules, never
``study``, ``campaign`` or ``bench`` (``tests/test_layout.py``).
"""
