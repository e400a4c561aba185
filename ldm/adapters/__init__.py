"""Layer 6: what changes a model without replacing it: LoRA (layers, files, the kohya key layout) and textual-inversion
embeddings.
"""
