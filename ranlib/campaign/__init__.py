"""ranlib's campaign layer: many trainings on one machine within a budget (``python -m
ranlib.campaign``, its command line in ``cli``): the plan (``plan``), the runner (``runner``), the
background study from a pinned commit (``background``, ``pinned``), its time estimates
(``estimates``), the GPU sitting (``sitting``) and carrying results home (``archive``).

It may import every layer below it (``models``, ``data``, ``training``, ``study``) and the shared
top-level modules, never ``bench`` (``tests/test_layout.py``).
"""
