"""Models: load a causal LM, account for its checkpoint's tensors, and find its parts.

- :mod:`quantsweep.models.loading`: ``load_model`` dispatch (toy, openPangu, any HF causal LM).
- :mod:`quantsweep.models.checkpoint`: the checkpoint on disk, its weight files and the
  tensor accounting every load goes through.
- :mod:`quantsweep.models.openpangu`: openPangu-Embedded through transformers' Llama classes.
- :mod:`quantsweep.models.layout`: where decoder layers, Linears, embeddings and head are.
- :mod:`quantsweep.models.snapshot`: a host copy of the weights, restored between recipes.

This file imports nothing, so importing one submodule never loads the others.
"""
