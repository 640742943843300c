"""The whole loop: operator, trainer Job and model server on the real cluster (see tests/conftest.py)."""
