"""The engine the methods share, apart from any one method.

- :mod:`quantsweep.methods.engine.sequential`: calibrate and quantize a model one decoder
  layer at a time, each layer seeing the outputs of the already-quantized ones.
- :mod:`quantsweep.methods.engine.hessian`: the Hessian driver of GPTQ, GPTAQ, BiLLM and
  SliM-LLM (one accumulator per group of Linears that share an input).
- :mod:`quantsweep.methods.engine.obs`: the pure OBS column math (Hessians, damped inverse
  Cholesky, the column pass with lazy batch updates).
"""
