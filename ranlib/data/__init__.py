"""ranlib's data layer: the CIFAR arrays and the JPEG copy, their decode cache, the device-resident
batcher, ImageNet-style folders, Imagewoof, and the paper's label noise (Table 5).

It may import ``ranlib.models`` and the shared top-level modules (``errors``, ``paths``, ``files``,
``options``), never ``training``, ``study``, ``campaign`` or ``bench`` (``tests/test_layout.py``).
"""
