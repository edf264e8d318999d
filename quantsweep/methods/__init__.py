"""Quantization algorithms, one file each, registered with :func:`quantsweep.recipes.register_method`."""
