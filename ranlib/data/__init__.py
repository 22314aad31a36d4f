"""ranlib's data layer: the CIFAR arrays, the JPEG copy and image folders as arrays (``cifar``), decoding
and the decode cache (``decode``), the device-resident batcher (``batches``), ImageNet-style folders
(``folders``), Imagewoof (``imagewoof``), and the paper's label noise (Table 5, ``noise``).

It may import ``ranlib.models`` and the shared top-level modules (``errors``, ``paths``, ``files``,
``options``), never ``training``, ``study``, ``campaign`` or ``bench`` (``tests/test_layout.py``).
"""
