"""Model kinds: gradient-boosted trees (fast tier) and, on the worker only, transformers."""
