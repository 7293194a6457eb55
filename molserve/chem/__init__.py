"""Molecules: parsing, canonical forms, fingerprints, computed descriptors, similarity.

Nothing here imports the rest of molserve.
"""
