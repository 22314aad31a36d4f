"""ranlib's campaign layer: many trainings on one machine within a budget
(``python -m ranlib.campaign``), the background study from a pinned commit, its estimates, and the
GPU sitting.

It may import every layer below it (``models``, ``data``, ``training``, ``study``) and the shared
top-level modules, never ``bench`` (``tests/test_layout.py``).
"""
