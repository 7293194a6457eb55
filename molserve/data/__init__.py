"""Datasets: the ones bundled in installed packages, user CSV/SDF files, splits."""
