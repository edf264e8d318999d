"""Quantization algorithms, one file each, registered with :func:`quantsweep.methods.registry.register_method`."""
