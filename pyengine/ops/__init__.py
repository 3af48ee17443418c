"""Ops: one module per op (``pyengine.ops.<op>``); the public functions are also at ``pyengine.<op>``."""
