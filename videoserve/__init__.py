"""Serving FastVideo's Wan text-to-video and image-to-video models on Ray Serve."""

__version__ = "0.1.0"
