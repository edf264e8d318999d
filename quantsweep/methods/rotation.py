"""Rotate the residual stream of a Llama-style model (QuaRot / SpinQuant), keeping its function.

Ashkboos et al., "QuaRot: Outlier-Free 4-Bit Inference in Rotated LLMs" (arXiv:2404.00456);
Liu et al., "SpinQuant: LLM quantization with learned rotations" (arXiv:2405.16406).

With an orthogonal ``Q`` (``Q Q^T = I``) and hidden states as row vectors ``x``:

1. Each RMSNorm's scale ``gamma`` is folded into the Linears that read its output
   (``W <- W diag(gamma)``) and set to ones. Then ``RMSNorm(x Q) = RMSNorm(x) Q``,
   because a rotation keeps the norm of ``x``.
2. The residual stream becomes ``x Q``: the embedding table ``E <- E Q``; every Linear
   that *reads* it (q/k/v, gate/up, ``lm_head``) ``W <- W Q``; every Linear that *writes*
   it (``o_proj``, ``down_proj``) ``W <- Q^T W`` and its bias ``b <- Q^T b``.
   openPangu-Embedded's q/k/v biases are untouched (their inputs rotate, their outputs
   do not); its ``o_proj`` bias is rotated. Grouped-query attention changes nothing:
   the heads live on the output side of q/k/v, which is not rotated.
3. Tied input/output embeddings are untied first, since ``lm_head`` takes the final
   norm's scale and the embedding does not (``config.tie_word_embeddings`` is set to
   False, or lm-eval's ``tie_weights()`` would tie them back).
4. Online Hadamard (QuaRot): on the input of each named Linear (``down_proj`` by default,
   optionally ``o_proj``), a forward pre-hook applies ``x <- x H`` (``H`` the normalized
   Hadamard of the Linear's input width, :func:`quantsweep.quant.hadamard.hadamard_transform`)
   and the weight takes ``W <- W H``, so the product is unchanged and the activation
   quantizer, attached later, sees the spread-out input. It has no parameters.

``Q`` is :func:`quantsweep.quant.hadamard.random_hadamard` (seeded), or a learned matrix
read from a file (SpinQuant's ``R1``), checked for shape and orthogonality. In exact
arithmetic the rotated model computes the same logits; in fp32 they agree to ~1e-5
(tests). The arithmetic is done in float64 for weights on the host, float32 elsewhere.

Everything is undone by :meth:`quantsweep.models.snapshot.WeightSnapshot.restore`
(weights, norms, the tie, the hooks). Every check runs before the first change.

Example:
    >>> import quantsweep, torch
    >>> model, _ = quantsweep.load_model("toy")
    >>> ids = torch.tensor([[5, 6, 7, 8]])
    >>> before = model(ids).logits
    >>> info = rotate_model(model, seed=0)
    >>> info.hidden_size, info.online, info.extra_parameters
    (128, ('down_proj',), 0)
    >>> torch.allclose(model(ids).logits, before, atol=1e-4)
    True
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from quantsweep._schema import did_you_mean
from quantsweep.models.layout import decoder_layer_prefix, decoder_layers, input_embeddings, lm_head
from quantsweep.models.snapshot import HOOK_ATTRIBUTE, attach_hook
from quantsweep.quant.hadamard import hadamard_factors, hadamard_transform, random_hadamard

logger = logging.getLogger(__name__)

# Linears whose input may get an online Hadamard, by name inside a decoder layer.
ONLINE_TARGETS = {"down_proj": "mlp.down_proj", "o_proj": "self_attn.o_proj"}
READERS = {"input_layernorm": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
           "post_attention_layernorm": ("mlp.gate_proj", "mlp.up_proj")}  # fmt: skip
WRITERS = ("self_attn.o_proj", "mlp.down_proj")
MATRIX_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
# Largest max |Q^T Q - I| accepted for a learned matrix (float32 storage gives ~1e-6).
ORTHOGONALITY_TOLERANCE = 1e-3


@dataclass(frozen=True)
class RotationInfo:
    """What :func:`rotate_model` did.

    Attributes:
        hidden_size: order of the residual rotation.
        seed: seed of the random Hadamard signs (kept also for a file, where it is unused).
        online: the Linears (by short name) whose input got an online Hadamard.
        source: ``"hadamard"``, or the path of the learned matrix.
        extra_parameters: parameters a deployment must store beyond the weights: 0 for
            Hadamard (online ones included: they are computed), ``n * n`` for a learned matrix.
        untied: whether tied input/output embeddings were untied.

    Example:
        >>> RotationInfo(hidden_size=8, seed=0, online=(), source="hadamard", extra_parameters=0, untied=False).source
        'hadamard'
    """

    hidden_size: int
    seed: int
    online: tuple[str, ...]
    source: str
    extra_parameters: int
    untied: bool


def _final_norm(model: nn.Module) -> tuple[str, nn.Module | None]:
    prefix = decoder_layer_prefix(model)
    parent_name = prefix.rpartition(".")[0]
    name = f"{parent_name}.norm" if parent_name else "norm"
    parent = model.get_submodule(parent_name) if parent_name else model
    return name, getattr(parent, "norm", None)


def _check_rms_norm(name: str, norm: nn.Module | None, hidden: int) -> None:
    """Refuse anything that is not ``x / rms(x) * weight`` over ``hidden`` channels."""
    if norm is None:
        raise ValueError(f"cannot rotate: no module {name} (rotation needs the Llama layout with RMSNorm)")
    if isinstance(norm, nn.LayerNorm) or getattr(norm, "bias", None) is not None:
        raise ValueError(
            f"cannot rotate: {name} is a LayerNorm ({type(norm).__name__}) with a bias or mean subtraction, "
            "which does not commute with a rotation; rotation needs RMSNorm"
        )
    weight = getattr(norm, "weight", None)
    if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != (hidden,):
        raise ValueError(f"cannot rotate: {name} ({type(norm).__name__}) has no weight of shape ({hidden},)")
    if weight.device.type == "meta":  # a structure-only model (the sweep's pre-work check): nothing to probe
        return
    eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)) or 1e-6)
    probe = torch.randn(2, hidden, generator=torch.Generator().manual_seed(0)).to(weight.device, weight.dtype)
    with torch.no_grad():
        got = norm(probe).float()
    x = probe.float()
    expected = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    tolerance = 1e-4 if weight.dtype == torch.float32 else 2e-2
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=tolerance, atol=tolerance):
        raise ValueError(
            f"cannot rotate: {name} ({type(norm).__name__}) does not compute x / rms(x) * weight "
            "(e.g. a (1 + weight) scale or a mean subtraction); its scale cannot be folded"
        )


def _linear(layer: nn.Module, layer_name: str, path: str) -> nn.Linear:
    try:
        module = layer.get_submodule(path)
    except AttributeError:
        module = None
    if not isinstance(module, nn.Linear):
        raise ValueError(
            f"cannot rotate: {layer_name}.{path} is {type(module).__name__ if module is not None else 'missing'}, "
            "expected nn.Linear (rotation knows the Llama layout: self_attn.q/k/v/o_proj, mlp.gate/up/down_proj)"
        )
    if not module.weight.dtype.is_floating_point:
        raise ValueError(
            f"cannot rotate: {layer_name}.{path} holds {module.weight.dtype} weights; rotate before quantizing"
        )
    return module


def check_online(online: Sequence[str]) -> tuple[str, ...]:
    """The one check of ``online`` (Linears that get an online Hadamard): known names, each once; as a tuple.

    Raises:
        TypeError: a string instead of a list.
        ValueError: an unknown name (with "did you mean") or a repeated one.

    Example:
        >>> check_online(["o_proj", "down_proj"])
        ('o_proj', 'down_proj')
        >>> check_online(["down"])
        Traceback (most recent call last):
        ...
        ValueError: unknown online Hadamard target 'down' (did you mean 'down_proj'?); allowed: down_proj, o_proj
    """
    if isinstance(online, str):
        raise TypeError(f"online must be a list of Linear names, e.g. ['down_proj'], got the string {online!r}")
    names = tuple(online)
    unknown = [name for name in names if name not in ONLINE_TARGETS]
    if unknown:
        raise ValueError(
            f"unknown online Hadamard target {unknown[0]!r}{did_you_mean(unknown[0], ONLINE_TARGETS)}; "
            f"allowed: {', '.join(ONLINE_TARGETS)}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"'online' lists module names once each, got {list(names)}")
    return names


def check_rotatable(model: nn.Module, *, online: Sequence[str] = ("down_proj",), hadamard: bool = True) -> None:
    """Check that :func:`rotate_model` can rotate ``model``; change nothing.

    Args:
        model: a causal LM.
        online: the Linears (``down_proj``, ``o_proj``) that will get an online Hadamard.
        hadamard: the residual rotation is a Hadamard (False: a learned matrix, any width).

    Raises:
        ValueError: naming the module and why: a LayerNorm with a bias or mean subtraction,
            a non-Llama layout, tied weights it cannot untie, quantsweep hooks already
            attached (rotate first), or no Hadamard matrix of a needed width.

    Example:
        >>> import quantsweep
        >>> model, _ = quantsweep.load_model("toy")
        >>> check_rotatable(model)
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> check_rotatable(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)))
        Traceback (most recent call last):
        ...
        ValueError: cannot rotate: transformer.h.0.input_layernorm: no such module (rotation needs the Llama layout with RMSNorm)
    """
    _check_structure(model, check_online(online), hadamard)


def _check_structure(model: nn.Module, online: tuple[str, ...], hadamard: bool) -> None:
    """:func:`check_rotatable` for an ``online`` already checked by :func:`check_online`."""
    embedding, head = input_embeddings(model), lm_head(model)
    if not isinstance(embedding, nn.Embedding):
        raise ValueError(f"cannot rotate {type(model).__name__}: no nn.Embedding input embedding")
    if not isinstance(head, nn.Linear):
        raise ValueError(f"cannot rotate {type(model).__name__}: the output head is not an nn.Linear")
    hidden = embedding.weight.shape[1]
    if head.in_features != hidden or head.bias is not None:
        raise ValueError(f"cannot rotate: lm_head reads {head.in_features} features (hidden {hidden}) or has a bias")
    prefix = decoder_layer_prefix(model)
    for index, layer in enumerate(decoder_layers(model)):
        layer_name = f"{prefix}.{index}"
        for norm_name, readers in READERS.items():
            norm = getattr(layer, norm_name, None)
            if norm is None:
                raise ValueError(
                    f"cannot rotate: {layer_name}.{norm_name}: no such module (rotation needs the Llama layout with RMSNorm)"
                )
            _check_rms_norm(f"{layer_name}.{norm_name}", norm, hidden)
            for path in readers:
                if _linear(layer, layer_name, path).in_features != hidden:
                    raise ValueError(f"cannot rotate: {layer_name}.{path} does not read the {hidden}-wide residual")
        for path in WRITERS:
            if _linear(layer, layer_name, path).out_features != hidden:
                raise ValueError(f"cannot rotate: {layer_name}.{path} does not write the {hidden}-wide residual")
        for name in online:
            width = _linear(layer, layer_name, ONLINE_TARGETS[name]).in_features
            try:
                hadamard_factors(width)
            except ValueError as error:
                raise ValueError(
                    f"cannot add an online Hadamard on {layer_name}.{ONLINE_TARGETS[name]}: {error}"
                ) from None
    norm_name, norm = _final_norm(model)
    _check_rms_norm(norm_name, norm, hidden)
    if hadamard:
        try:
            hadamard_factors(hidden)
        except ValueError as error:
            raise ValueError(f"cannot rotate the {hidden}-wide residual stream with a Hadamard: {error}") from None
    hooked = [name for name, module in model.named_modules() if module.__dict__.get(HOOK_ATTRIBUTE)]
    if hooked:
        raise ValueError(
            f"cannot rotate: {hooked[0]} already carries quantsweep hooks (activation quantization or an earlier "
            "rotation); rotate once, before quantizing, or restore the snapshot first"
        )


def check_matrix_file(path: str | os.PathLike) -> Path:
    """What can be checked of a rotation matrix file without a model: its suffix and that it exists.

    Raises:
        ValueError: an unknown suffix or a missing file.

    Example:
        >>> check_matrix_file("r1.npy")
        Traceback (most recent call last):
        ...
        ValueError: rotation matrix file r1.npy must end in one of ['.pt', '.pth', '.bin', '.safetensors']
    """
    path = Path(path)
    if path.suffix not in MATRIX_SUFFIXES:
        raise ValueError(f"rotation matrix file {path} must end in one of {list(MATRIX_SUFFIXES)}")
    if not path.is_file():
        raise ValueError(f"rotation matrix file {path} does not exist (file not found)")
    return path


def load_rotation_matrix(path: str | os.PathLike, hidden_size: int) -> torch.Tensor:
    """Read a learned ``hidden_size x hidden_size`` orthogonal matrix (float64) from a file.

    The file is ``.pt`` / ``.pth`` / ``.bin`` (``torch.save`` of a tensor, or of a dict
    holding one tensor or SpinQuant's ``R1``) or ``.safetensors`` (one tensor, or ``R1``).
    The matrix rotates row vectors as ``x @ Q`` (SpinQuant's convention for ``R1``).

    Raises:
        ValueError: missing file, unknown suffix, no single matrix in it, wrong shape,
            non-finite entries, or ``max |Q^T Q - I|`` above 1e-3.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "r1.pt"
        >>> torch.save({"R1": torch.linalg.qr(torch.randn(8, 8))[0]}, path)
        >>> load_rotation_matrix(path, 8).shape
        torch.Size([8, 8])
        >>> load_rotation_matrix(path, 16)
        Traceback (most recent call last):
        ...
        ValueError: rotation matrix in ... has shape (8, 8); the model needs (16, 16)
    """
    path = check_matrix_file(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            content = load_file(str(path))
        else:
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling and safetensors header errors come in many types
        raise ValueError(f"cannot read rotation matrix file {path}: {error}") from None
    if isinstance(content, dict):
        tensors = {key: value for key, value in content.items() if isinstance(value, torch.Tensor)}
        if "R1" in tensors:
            content = tensors["R1"]
        elif len(tensors) == 1:
            content = next(iter(tensors.values()))
        else:
            raise ValueError(f"{path} holds {sorted(tensors)}; expected one tensor or a key 'R1'")
    if not isinstance(content, torch.Tensor):
        raise ValueError(f"{path} holds a {type(content).__name__}, expected a tensor")
    if tuple(content.shape) != (hidden_size, hidden_size):
        raise ValueError(
            f"rotation matrix in {path} has shape {tuple(content.shape)}; the model needs ({hidden_size}, {hidden_size})"
        )
    matrix = content.detach().to(torch.float64)
    if not bool(torch.isfinite(matrix).all()):
        raise ValueError(f"rotation matrix in {path} has non-finite entries")
    error = float((matrix.T @ matrix - torch.eye(hidden_size, dtype=torch.float64)).abs().max())
    if error > ORTHOGONALITY_TOLERANCE:
        raise ValueError(
            f"rotation matrix in {path} is not orthogonal: max |Q^T Q - I| = {error:.3g} > {ORTHOGONALITY_TOLERANCE}"
        )
    return matrix


def _work(tensor: torch.Tensor) -> torch.dtype:
    # float64 where it is cheap and exact enough (the host); accelerators may lack it.
    return torch.float64 if tensor.device.type == "cpu" else torch.float32


@torch.no_grad()
def _rotate_rows(weight: torch.Tensor, q: torch.Tensor, scale: torch.Tensor | None = None, chunk: int = 8192) -> None:
    """``W <- (W diag(scale)) Q`` in place, ``chunk`` rows at a time (embedding tables are large)."""
    dtype = _work(weight)
    rotation = q.to(weight.device, dtype)
    factor = None if scale is None else scale.detach().to(weight.device, dtype)
    for start in range(0, weight.shape[0], chunk):
        rows = weight[start : start + chunk].to(dtype)
        if factor is not None:
            rows = rows * factor
        weight[start : start + chunk] = (rows @ rotation).to(weight.dtype)


@torch.no_grad()
def _rotate_output(linear: nn.Linear, q: torch.Tensor) -> None:
    """``W <- Q^T W``, ``b <- Q^T b`` (a Linear writing the residual stream)."""
    dtype = _work(linear.weight)
    rotation = q.to(linear.weight.device, dtype)
    linear.weight.copy_((rotation.T @ linear.weight.to(dtype)).to(linear.weight.dtype))
    if linear.bias is not None:
        linear.bias.copy_((linear.bias.to(dtype) @ rotation).to(linear.bias.dtype))


def _online_hadamard(module: nn.Module, args):
    if not args:
        return None
    x = args[0]
    return (hadamard_transform(x.float()).to(x.dtype),) + tuple(args[1:])


@torch.no_grad()
def _attach_online(linear: nn.Linear) -> None:
    """Fold ``H`` into the weight (``W <- W H``) and apply ``x <- x H`` to the input on every call."""
    dtype = _work(linear.weight)
    linear.weight.copy_(hadamard_transform(linear.weight.to(dtype)).to(linear.weight.dtype))
    attach_hook(linear, linear.register_forward_pre_hook(_online_hadamard))


def rotate_model(
    model: nn.Module,
    *,
    seed: int = 0,
    online: Sequence[str] = ("down_proj",),
    matrix: str | os.PathLike | None = None,
) -> RotationInfo:
    """Rotate ``model``'s residual stream in place; its unquantized logits stay the same.

    Args:
        model: a Llama-style causal LM (Llama, Qwen2, Mistral, openPangu-Embedded, toy).
        seed: seed of the randomized Hadamard signs.
        online: Linears (``down_proj``, ``o_proj``) whose input gets an online Hadamard.
        matrix: a file with a learned orthogonal ``hidden x hidden`` matrix (SpinQuant's
            ``R1``) used instead of the random Hadamard.

    Returns:
        A :class:`RotationInfo`.

    Raises:
        ValueError / TypeError: see :func:`check_rotatable` and :func:`load_rotation_matrix`;
            raised before anything changes.

    Example:
        >>> import quantsweep
        >>> model, _ = quantsweep.load_model("toy")
        >>> rotate_model(model, seed=1, online=["down_proj", "o_proj"])
        RotationInfo(hidden_size=128, seed=1, online=('down_proj', 'o_proj'), source='hadamard', extra_parameters=0, untied=False)
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {seed!r}")
    online = check_online(online)
    _check_structure(model, online, hadamard=matrix is None)
    embedding, head = input_embeddings(model), lm_head(model)
    hidden = embedding.weight.shape[1]
    if matrix is None:
        q, source, extra = random_hadamard(hidden, seed), "hadamard", 0
    else:
        q, source, extra = load_rotation_matrix(matrix, hidden), str(matrix), hidden * hidden
    # --- every check is done; changes start here ---
    untied = head.weight is embedding.weight
    if untied:
        head.weight = nn.Parameter(embedding.weight.detach().clone(), requires_grad=embedding.weight.requires_grad)
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "tie_word_embeddings"):
            config.tie_word_embeddings = False  # or tie_weights() (lm-eval calls it) would tie them again
    _rotate_rows(embedding.weight.data, q)
    for layer in decoder_layers(model):
        for norm_name, readers in READERS.items():
            norm = getattr(layer, norm_name)
            for path in readers:
                _rotate_rows(layer.get_submodule(path).weight.data, q, scale=norm.weight)
            with torch.no_grad():
                norm.weight.fill_(1.0)
        for path in WRITERS:
            _rotate_output(layer.get_submodule(path), q)
        for name in online:
            _attach_online(layer.get_submodule(ONLINE_TARGETS[name]))
    _, final_norm = _final_norm(model)
    _rotate_rows(head.weight.data, q, scale=final_norm.weight)
    with torch.no_grad():
        final_norm.weight.fill_(1.0)
    logger.info(
        "rotated the %d-wide residual stream (%s, seed %d), online Hadamard on %s%s",
        hidden,
        source,
        seed,
        list(online) or "nothing",
        ", embeddings untied" if untied else "",
    )
    return RotationInfo(
        hidden_size=hidden, seed=seed, online=online, source=source, extra_parameters=extra, untied=untied
    )
