"""The ``wkv7`` op (RWKV-7): ``reference.py`` is the executable spec."""
