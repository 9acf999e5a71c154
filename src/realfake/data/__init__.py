__side__ = "shared"  # see tests/test_layers.py
