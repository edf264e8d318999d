"""Composed recipes: strict parsing, the order rules, legacy recipes unchanged, stages applied in order."""

import dataclasses

import pytest
import torch
import yaml

import quantsweep
from quantsweep.methods.activation import activation_bits
from quantsweep.methods.catalog import get_method
from quantsweep.methods.compose import ComposedRecipe, WeightStage, recipe_precision
from quantsweep.methods.registry import RecipeError
from quantsweep.recipes import (
    RECIPES_DIR,
    get_recipe,
    list_recipes,
    needs_calibration,
    recipe_from_dict,
    recipe_from_yaml,
)

W4A4 = {
    "name": "w4a4-rtn",
    "stages": [{"weight": "rtn", "bits": 4, "group_size": None, "symmetric": True}, {"activations": {"bits": 4}}],
}


def _composed(*stages, **extra):
    return recipe_from_dict({"name": "x", "stages": list(stages), **extra})


# --- parsing, strictly -------------------------------------------------------------------------


def test_composed_recipe_round_trips_and_lists_every_setting():
    recipe = _composed(
        {"transform": "rotate", "seed": 3},
        {"weight": "gptq", "bits": 4},
        {"activations": {"bits": 4, "clip_ratio": 0.9}},
        {"kv_cache": {"bits": 4, "group_size": 64}},
    )
    assert recipe.method == "rotate+gptq+a4+kv4"
    data = recipe.to_dict()
    assert data["stages"][0] == {"transform": "rotate", "seed": 3, "online": ["down_proj"], "matrix": None}
    gptq_fields = {f.name for f in dataclasses.fields(quantsweep.get_recipe("w4-gptq"))} - {
        "name",
        "method",
        "description",
    }
    assert set(data["stages"][1]) == {"weight"} | gptq_fields  # every field of the method, defaults included
    assert data["stages"][2] == {"activations": {"bits": 4, "symmetric": True, "clip_ratio": 0.9}}
    assert data["stages"][3] == {"kv_cache": {"bits": 4, "group_size": 64, "symmetric": False}}
    again = recipe_from_yaml(recipe.to_yaml())
    assert again == recipe and again.to_dict() == data


@pytest.mark.parametrize(
    "stage, message",
    [
        ({"weight": "rtn", "bitz": 4}, "unknown key 'bitz' (did you mean 'bits'?)"),
        ({"weight": "rtm"}, "unknown method 'rtm' (did you mean 'rtn'?)"),
        ({"transform": "rotat"}, "unknown transform 'rotat' (did you mean 'rotate'?)"),
        ({"transform": "rotate", "sed": 1}, "unknown key 'sed' (did you mean 'seed'?)"),
        ({"activation": {"bits": 4}}, "(did you mean 'activations'?)"),
        ({"activations": {"bits": 4, "clip_ratoi": 0.9}}, "unknown key 'clip_ratoi' (did you mean 'clip_ratio'?)"),
        ({"activations": {"bits": "four"}}, "'bits' must be int, got 'four'"),
        ({"activations": {"bits": 4, "clip_ratio": 1.5}}, "clip_ratio must be in (0, 1]"),
        ({"kv_cache": {"bits": 1}}, "bits must be one of"),
        ({"weight": "rtn", "activations": {"bits": 4}}, "exactly one of"),
        ({"activations": {"bits": 4}, "bits": 4}, "write its settings under it"),
        ({"weight": "gptq", "bits": 5}, "gptq supports bits"),
    ],
)
def test_a_bad_stage_is_named(stage, message):
    with pytest.raises(RecipeError) as error:
        _composed(stage)
    assert message in str(error.value) and "stages[0]" in str(error.value)


def test_unknown_top_level_key_of_a_composed_recipe_is_named():
    with pytest.raises(RecipeError, match=r"unknown key 'stage' .*did you mean 'stages'"):
        recipe_from_dict({"name": "x", "stages": [{"weight": "rtn"}], "stage": []})
    with pytest.raises(RecipeError, match=r"unknown key 'bits'.*weight stage"):
        recipe_from_dict({"name": "x", "stages": [{"weight": "rtn"}], "bits": 4})


@pytest.mark.parametrize(
    "stages, message",
    [
        ([{"weight": "rtn"}, {"weight": "gptq"}], "two weight methods (rtn, gptq)"),
        ([{"weight": "rtn"}, {"transform": "rotate"}], "comes after stage 'rtn'; the weights are already quantized"),
        ([{"activations": {"bits": 4}}, {"weight": "rtn"}], "comes before the weight method 'rtn'"),
        ([{"kv_cache": {"bits": 4}}, {"weight": "rtn"}], "comes before the weight method 'rtn'"),
        ([{"kv_cache": {"bits": 4}}, {"transform": "smooth"}], "transforms come first"),
        ([{"transform": "smooth"}, {"weight": "awq"}], "'awq' rescales channels itself"),
        ([{"transform": "smooth"}, {"weight": "smoothquant"}], "'smoothquant' rescales channels itself"),
        ([{"transform": "rotate"}, {"weight": "awq"}], "does not follow transform 'rotate'"),
        ([{"transform": "smooth"}, {"transform": "rotate"}], "'smooth' and 'rotate' are not combined"),
        ([{"transform": "rotate"}, {"transform": "rotate"}], "'rotate' appears twice"),
        ([{"weight": "smoothquant"}, {"activations": {"bits": 4}}], "quantizes activations itself"),
        ([{"weight": "gptaq", "activation_bits": 4}, {"activations": {"bits": 4}}], "quantizes activations itself"),
        ([], "'stages' is empty"),
    ],
)
def test_impossible_orders_are_refused(stages, message):
    with pytest.raises(RecipeError) as error:
        recipe_from_dict({"name": "bad", "stages": stages})
    assert message in str(error.value) and "'bad'" in str(error.value)


def test_overrides_are_validated_against_the_weight_method():
    with pytest.raises(RecipeError, match=r"'awq' cannot honour per-module overrides; methods that can: gptq, rtn"):
        recipe_from_dict({"name": "x", "method": "awq", "overrides": [{"match": "lm_head", "bits": 8}]})
    with pytest.raises(
        RecipeError, match=r"unknown key 'bitz' \(did you mean 'bits'\?\); allowed keys: match, skip, bits"
    ):
        recipe_from_dict({"name": "x", "method": "rtn", "overrides": [{"match": "lm_head", "bitz": 8}]})
    with pytest.raises(RecipeError, match=r"overrides\[0\].*gptq supports bits"):
        recipe_from_dict({"name": "x", "method": "gptq", "overrides": [{"match": "*", "bits": 5}]})
    with pytest.raises(RecipeError, match="skip: true' keeps the modules in full precision, so bits cannot apply"):
        recipe_from_dict({"name": "x", "method": "rtn", "overrides": [{"match": "*", "skip": True, "bits": 8}]})
    with pytest.raises(RecipeError, match="missing required key 'match'"):
        recipe_from_dict({"name": "x", "method": "rtn", "overrides": [{"bits": 8}]})
    with pytest.raises(RecipeError, match=r"<dict>: overrides\[0\]: 'group_size' must be int \| None, got 'all'$"):
        recipe_from_dict({"name": "x", "method": "rtn", "overrides": [{"match": "*", "group_size": "all"}]})
    with pytest.raises(RecipeError, match=r"<dict> \(a composed recipe\): unknown key 'stage' \(did you mean 'stages'"):
        recipe_from_dict({"name": "x", "stages": [{"weight": "rtn"}], "stage": []})
    with pytest.raises(RecipeError, match="nested braces"):
        recipe_from_dict({"name": "x", "method": "rtn", "overrides": [{"match": "a.{b,{c,d}}", "skip": True}]})


# --- legacy recipes: the one-stage case, unchanged ---------------------------------------------


@pytest.mark.parametrize(
    "name", [n for n in list_recipes() if "method" in yaml.safe_load((RECIPES_DIR / f"{n}.yaml").read_text())]
)
def test_a_legacy_recipe_is_still_its_methods_own_config(name):
    """Same class, same fields, same dict as before composition existed: so the same cell key."""
    recipe = get_recipe(name)
    data = yaml.safe_load((RECIPES_DIR / f"{name}.yaml").read_text())
    config_class = get_method(data["method"]).config
    assert type(recipe) is config_class and not isinstance(recipe, ComposedRecipe)
    assert recipe.to_dict() == dataclasses.asdict(config_class(**data))


@pytest.mark.parametrize("empty", [[], None])
def test_an_empty_overrides_list_keeps_the_legacy_config_and_its_cell_key(empty, tmp_path):
    from quantsweep.sweep.plan import plan_cells
    from quantsweep.sweep.spec import spec_from_dict

    legacy = {"name": "w4", "method": "rtn", "bits": 4}
    same = {**legacy, "overrides": empty}
    assert type(recipe_from_dict(same)) is type(recipe_from_dict(legacy))
    assert recipe_from_dict(same).to_dict() == recipe_from_dict(legacy).to_dict()
    keys = []
    for label, data in (("legacy", legacy), ("same", same)):
        path = tmp_path / label / "w4.yaml"
        path.parent.mkdir()
        path.write_text(yaml.safe_dump(data))
        spec = spec_from_dict(
            {"models": [{"path": "toy", "device": "cpu"}], "recipes": [str(path)], "tasks": ["toy_mc4"]}
        )
        keys.append([cell.key for cell in plan_cells(spec).cells])
    assert keys[0] == keys[1] and len(keys[0]) == 2  # the baseline and the recipe: the same keys


def test_a_one_stage_composed_recipe_gives_the_legacy_numbers():
    legacy, _ = quantsweep.load_model("toy")
    composed, _ = quantsweep.load_model("toy")
    quantsweep.quantize(legacy, "w4-rtn")
    stage = {k: v for k, v in get_recipe("w4-rtn").to_dict().items() if k not in ("name", "method", "description")}
    recipe = _composed({"weight": "rtn", **stage})
    assert recipe.precision() == recipe_precision(get_recipe("w4-rtn"))
    quantsweep.quantize(composed, recipe)
    for (name, a), (_, b) in zip(legacy.named_parameters(), composed.named_parameters()):
        assert torch.equal(a, b), name


def test_weight_plus_activations_equals_attaching_the_hooks_by_hand():
    from quantsweep.methods.activation import attach_activation_quant
    from quantsweep.models.layout import decoder_linears

    by_hand, _ = quantsweep.load_model("toy")
    composed, _ = quantsweep.load_model("toy")
    quantsweep.quantize(by_hand, recipe_from_dict({"name": "w4", "method": "rtn", "bits": 4, "group_size": None}))
    for linear in decoder_linears(by_hand).values():
        attach_activation_quant(linear, 4, True)
    result = quantsweep.apply_recipe(composed, recipe_from_dict(W4A4))
    assert all(activation_bits(linear) == 4 for linear in decoder_linears(composed).values())
    assert [s["stage"] for s in result.report["stages"]] == ["rtn", "activations"]
    ids = torch.randint(0, 123, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(by_hand(ids).logits, composed(ids).logits)


def test_smooth_transform_then_rtn_keeps_the_function_before_quantizing():
    model, _ = quantsweep.load_model("toy")
    ids = torch.randint(0, 123, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(ids).logits
    recipe = _composed({"transform": "smooth", "alpha": 0.5}, {"weight": "none"})
    assert recipe.needs_calibration() and needs_calibration(recipe)
    with pytest.raises(ValueError, match="needs calibration data"):
        quantsweep.apply_recipe(model, recipe)
    quantsweep.apply_recipe(model, recipe, calibration=torch.randint(0, 123, (4, 32)))
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, before, atol=1e-4)


# --- records and keys ----------------------------------------------------------------------------


def test_records_carry_the_resolved_recipe_and_its_bits(tmp_path):
    from quantsweep.sweep.plan import plan_cells
    from quantsweep.sweep.records import base_record
    from quantsweep.sweep.spec import spec_from_dict

    w4a4 = tmp_path / "w4a4.yaml"
    w4a4.write_text(yaml.safe_dump(W4A4))
    w4a8 = tmp_path / "w4a8.yaml"
    w4a8.write_text(
        yaml.safe_dump({**W4A4, "name": "w4a8", "stages": [W4A4["stages"][0], {"activations": {"bits": 8}}]})
    )
    spec = spec_from_dict(
        {
            "models": [{"path": "toy", "device": "cpu"}],
            "recipes": ["w4a4-smoothquant", str(w4a4), str(w4a8)],
            "tasks": ["toy_mc4"],
        }
    )
    cells = {c.recipe.name: c for c in plan_cells(spec).cells}
    record = base_record(cells["w4a4-rtn"], {})
    assert record["recipe_config"] == recipe_from_dict(W4A4).to_dict()
    assert (record["weight_bits"], record["activation_bits"], record["kv_cache_bits"]) == (4, 4, None)
    assert cells["w4a4-rtn"].key_fields["recipe"]["stages"] == record["recipe_config"]["stages"]
    assert cells["w4a4-rtn"].key != cells["w4a8"].key  # one setting of one stage changes the key
    smooth = base_record(cells["w4a4-smoothquant"], {})
    assert (smooth["weight_bits"], smooth["activation_bits"], smooth["kv_cache_bits"]) == (4, 4, None)
    fp = base_record(cells["fp"], {})
    assert (fp["weight_bits"], fp["activation_bits"], fp["kv_cache_bits"]) == (None, None, None)


def test_a_composed_recipe_with_a_weight_stage_is_a_weight_stage_object():
    recipe = recipe_from_dict(W4A4)
    assert isinstance(recipe.stages[0], WeightStage) and recipe.weight_config.bits == 4
    assert recipe.weight_config.name == "w4a4-rtn" and recipe.weight_config.description == ""


def test_results_rows_carry_the_bits_of_their_cell():
    from quantsweep.sweep.derived import _base
    from quantsweep.verdicts.config import VerdictConfig

    cell = {"model": "toy", "recipe": "r", "key": "k", "status": "done", "weight_bits": 4, "activation_bits": 4}
    row = _base({**cell, "kv_cache_bits": 4}, VerdictConfig())
    assert (row["weight_bits"], row["activation_bits"], row["kv_cache_bits"]) == (4, 4, 4)
