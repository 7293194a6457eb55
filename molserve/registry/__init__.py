"""Versioned, immutable model artifacts with manifests and checksums."""

from molserve.registry.store import ArtifactError, Registry

__all__ = ["ArtifactError", "Registry"]
