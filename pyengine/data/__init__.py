"""Procedural data: ShapeWorld (shapes, colours, cameras, multi-view renders, surface points)."""
