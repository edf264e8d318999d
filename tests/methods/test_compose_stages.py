"""The rotate transform and the kv_cache stage inside composed recipes: order, hooks, cost, checks before work."""

import pytest
import torch

import quantsweep
from quantsweep.measure.cost import cost_fields
from quantsweep.methods.activation import activation_bits, attach_activation_quant
from quantsweep.methods.kv_cache import attach_kv_cache_quant, kv_cache_bits
from quantsweep.methods.registry import RecipeError
from quantsweep.methods.rotation import rotate_model
from quantsweep.models.layout import decoder_linears
from quantsweep.models.snapshot import WeightSnapshot
from quantsweep.recipes import apply_recipe, check_recipe, get_recipe, recipe_from_dict

IDS = torch.randint(0, 123, (2, 24), generator=torch.Generator().manual_seed(0))


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits


def test_rotation_alone_keeps_the_function_and_restore_undoes_it():
    model, _ = quantsweep.load_model("toy")
    snapshot = WeightSnapshot(model)
    before = _logits(model)
    recipe = recipe_from_dict({"name": "rot", "stages": [{"transform": "rotate", "online": ["down_proj", "o_proj"]}]})
    result = apply_recipe(model, recipe)
    assert result.kernel == "none" and result.report["stages"][0]["source"] == "hadamard"
    assert torch.allclose(_logits(model), before, atol=1e-4)
    snapshot.restore(model)
    assert torch.equal(_logits(model), before)


def test_rotate_rtn_activations_kv_is_the_same_as_by_hand_in_that_order():
    """The recipe's stages run in order: rotation, weights, then activation and KV quantizers on top."""
    by_hand, _ = quantsweep.load_model("toy")
    rotate_model(by_hand, seed=3, online=("down_proj",))
    apply_recipe(by_hand, recipe_from_dict({"name": "w4", "method": "rtn", "bits": 4, "group_size": None}))
    for linear in decoder_linears(by_hand).values():
        attach_activation_quant(linear, 6, True, 0.9)
    attach_kv_cache_quant(by_hand, bits=4, group_size=16)

    composed, _ = quantsweep.load_model("toy")
    recipe = recipe_from_dict(
        {
            "name": "r-w4a6kv4",
            "stages": [
                {"transform": "rotate", "seed": 3},
                {"weight": "rtn", "bits": 4, "group_size": None},
                {"activations": {"bits": 6, "clip_ratio": 0.9}},
                {"kv_cache": {"bits": 4, "group_size": 16}},
            ],
        }
    )
    result = apply_recipe(composed, recipe)
    assert [s["stage"] for s in result.report["stages"]] == ["rotate", "rtn", "activations", "kv_cache"]
    assert kv_cache_bits(composed) == 4
    assert {activation_bits(linear) for linear in decoder_linears(composed).values()} == {6}
    assert torch.equal(_logits(composed), _logits(by_hand))
    assert recipe.precision() == {"weight_bits": 4, "activation_bits": 6, "kv_cache_bits": 4}


def test_a_learned_matrix_counts_its_parameters_in_bits_per_weight(tmp_path, monkeypatch):
    from quantsweep.methods import compose, rotation

    path = tmp_path / "r1.pt"
    torch.save({"R1": torch.linalg.qr(torch.randn(128, 128, dtype=torch.float64))[0]}, path)
    stages = [{"transform": "rotate", "online": []}, {"weight": "rtn", "bits": 4}]
    learned = recipe_from_dict({"name": "learned", "stages": [{**stages[0], "matrix": str(path)}, stages[1]]})
    hadamard = recipe_from_dict({"name": "hadamard", "stages": stages})
    costs = {}
    reads = []
    real_load = rotation.load_rotation_matrix
    for module in (rotation, compose):  # compose imports it by name
        monkeypatch.setattr(module, "load_rotation_matrix", lambda *a: reads.append(a) or real_load(*a))
    for recipe in (learned, hadamard):
        model, _ = quantsweep.load_model("toy")
        result = apply_recipe(model, recipe)
        costs[recipe.name] = cost_fields(model, recipe, result)
    assert len(reads) == 1  # applying reads the learned matrix once
    assert costs["learned"]["extra_parameters"] == 128 * 128 and costs["hadamard"]["extra_parameters"] == 0
    weights = costs["hadamard"]["weights"]
    assert costs["learned"]["weights"] == weights
    extra_bits = (
        costs["learned"]["theoretical_bits_per_weight"] - costs["hadamard"]["theoretical_bits_per_weight"]
    ) * weights
    assert extra_bits == pytest.approx(128 * 128 * 32, rel=1e-9)  # n x n at the model's fp32 width


def test_what_cannot_work_is_refused_before_any_weight_changes(tmp_path):
    model, _ = quantsweep.load_model("toy")
    before = [p.detach().clone() for p in model.parameters()]
    bad_group = recipe_from_dict(
        {
            "name": "kv",
            "stages": [{"transform": "rotate"}, {"weight": "rtn"}, {"kv_cache": {"bits": 4, "group_size": 24}}],
        }
    )
    with pytest.raises(ValueError, match="group_size 24 does not divide head_dim 32"):
        apply_recipe(model, bad_group)
    missing = recipe_from_dict({"name": "m", "stages": [{"transform": "rotate", "matrix": str(tmp_path / "none.pt")}]})
    with pytest.raises(ValueError, match="rotation matrix file .* does not exist"):
        check_recipe(model, missing)
    not_orthogonal = tmp_path / "r1.pt"
    torch.save({"R1": torch.full((128, 128), 0.5)}, not_orthogonal)
    bad_matrix = recipe_from_dict(
        {"name": "q", "stages": [{"transform": "rotate", "matrix": str(not_orthogonal)}, {"weight": "rtn"}]}
    )
    with pytest.raises(ValueError, match="is not orthogonal"):
        apply_recipe(model, bad_matrix)  # read once, by the rotation itself, still before any change
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(RecipeError, match=r"unknown online Hadamard target 'down' \(did you mean 'down_proj'\?\)"):
        recipe_from_dict({"name": "o", "stages": [{"transform": "rotate", "online": ["down"]}]})
    with pytest.raises(RecipeError, match=r"transform 'rotate': 'online' lists module names once each"):
        recipe_from_dict({"name": "o", "stages": [{"transform": "rotate", "online": ["o_proj", "o_proj"]}]})


def test_a_model_that_cannot_be_rotated_is_named_before_work():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)).eval()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="cannot rotate: transformer.h.0"):
        apply_recipe(model, get_recipe("w4a4-rotate-rtn"))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("name", ["w4a4-rotate-rtn", "w4a4-rotate-gptq", "w4a4kv4-rotate-gptq", "w2-rotate-gptq"])
def test_the_rescue_recipes_pass_the_sweeps_check_on_the_model_structure(name):
    from quantsweep.models.loading import meta_model

    check_recipe(meta_model("toy"), name)  # the check plan_cells runs on a meta-device model


def test_a_bad_rotation_matrix_is_refused_on_the_meta_model_before_work(tmp_path):
    from quantsweep.models.loading import meta_model

    structure = meta_model("toy")
    stages = [{"transform": "rotate", "online": []}, {"weight": "rtn", "bits": 4}]
    skewed = torch.linalg.qr(torch.randn(128, 128, dtype=torch.float64))[0]
    skewed[0, 0] += 0.1
    cases = {
        "wrong.pt": (torch.eye(64), r"has shape \(64, 64\); the model needs \(128, 128\)"),
        "skewed.pt": (skewed, "is not orthogonal"),
        "r1.npy": (None, r"must end in one of \['.pt'"),
    }
    for file_name, (matrix, message) in cases.items():
        path = tmp_path / file_name
        if matrix is not None:
            torch.save({"R1": matrix}, path)
        recipe = recipe_from_dict({"name": "r", "stages": [{**stages[0], "matrix": str(path)}, stages[1]]})
        with pytest.raises(ValueError, match=message):
            check_recipe(structure, recipe)


def test_the_sweeps_check_names_the_recipe_once(tmp_path):
    from quantsweep.sweep.plan import check_shapes
    from quantsweep.sweep.spec import ModelSpec

    nowhere = recipe_from_dict({"name": "w2x", "method": "rtn", "overrides": [{"match": "nowhere.*", "skip": True}]})
    with pytest.raises(ValueError) as error:
        check_shapes(ModelSpec(path="toy"), [nowhere])
    assert str(error.value).startswith("recipe 'w2x': override 'nowhere.*' matches no module")
    assert str(error.value).count("recipe 'w2x'") == 1
    missing = recipe_from_dict(
        {"name": "m", "stages": [{"transform": "rotate", "matrix": str(tmp_path / "none.pt")}, {"weight": "rtn"}]}
    )
    with pytest.raises(ValueError, match=r"^recipe 'm': rotation matrix file .* does not exist"):
        check_shapes(ModelSpec(path="toy"), [missing])
