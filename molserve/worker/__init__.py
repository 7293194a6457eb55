"""The transformer worker service: loads transformer models, batches requests dynamically."""
