"""Pretraining objectives; `get_objective(name)` looks one up (`objectives.py`)."""
from tandem.ssl.objectives import get_objective

__all__ = ["get_objective"]
