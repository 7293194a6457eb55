"""ChemBERTa-style RoBERTa models on SMILES: tokenizer, pretraining, fine-tuning, inference.

Worker tier only: these modules import torch and transformers, which the gateway never does.
"""
