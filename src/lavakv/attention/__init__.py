"""Attention over compressed layers: the function registered with transformers, masks, ragged kernels."""
