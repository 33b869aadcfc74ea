"""Callbacks for the pieces that cut across papers. They never import a paper's module."""

from callbacks.images import ImageGrids, image_grid, log_image_grid

__all__ = ["ImageGrids", "image_grid", "log_image_grid"]
