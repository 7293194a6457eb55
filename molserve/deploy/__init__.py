"""Deployments of the worker tier on existing distributed engines (Modal, Ray Serve)."""
