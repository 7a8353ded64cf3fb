"""The tdsim version, in one place (pyproject reads it; ``tdsim.__version__`` re-exports it)."""

__version__ = "0.1.0"
