"""Modules built on pyengine's ops."""

from pyengine.nn.hash_grid import HashGrid

__all__ = ["HashGrid"]
