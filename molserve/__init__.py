"""molserve: molecular property and bioactivity predictions from SMILES."""

__version__ = "0.1.0"
