"""molserve: molecular property and bioactivity predictions from SMILES."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `from molserve import Predictor` without making `import molserve` load RDKit and the models.
    if name in ("Predictor", "Predictions"):
        from molserve import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'molserve' has no attribute {name!r}")
