"""The package version (one place: skipdsl/__init__.py and the checkpoints read it)."""
__version__ = "0.1.0"
