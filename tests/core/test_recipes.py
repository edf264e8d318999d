"""Recipe registry, YAML round trips and errors."""

import dataclasses

import pytest
import yaml

import quantsweep
from quantsweep.methods.catalog import get_method
from quantsweep.methods.registry import RecipeConfig, RecipeError, register_method
from quantsweep.recipes import expand_recipes, get_recipe, list_grids, list_recipes, recipe_from_dict, recipe_from_yaml


@pytest.mark.parametrize("name", list_recipes())
def test_every_recipe_round_trips_through_yaml(name):
    recipe = get_recipe(name)
    again = recipe_from_yaml(recipe.to_yaml())
    assert again == recipe and type(again) is type(recipe)
    assert dataclasses.is_dataclass(recipe)
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.name = "changed"


@pytest.mark.parametrize("name", list_recipes())
def test_recipe_file_keys_are_exactly_config_fields(name):
    from quantsweep.recipes import RECIPES_DIR

    data = yaml.safe_load((RECIPES_DIR / f"{name}.yaml").read_text())
    if "stages" in data:  # a composed recipe: its top-level keys, its stages checked when read
        fields = {"name", "description", "method", "stages", "overrides"}
    else:
        fields = {f.name for f in dataclasses.fields(get_method(data["method"]).config)}
    assert set(data) <= fields and data["name"] == name


def test_foundation_recipes_present():
    assert {"fp", "w8-rtn", "w4-rtn", "w2-rtn", "w1-rtn"} <= set(list_recipes())
    assert get_recipe("w8-rtn").group_size is None
    assert get_recipe("w4-rtn").group_size == 128 and get_recipe("w2-rtn").bits == 2
    assert get_recipe("w1-rtn").bits == 1
    assert get_recipe("fp").quantize_lm_head is False and get_recipe("fp").quantize_embeddings is False


def test_unknown_recipe_suggests_closest():
    with pytest.raises(RecipeError, match="did you mean 'w4-rtn'"):
        get_recipe("w4-rnt")


def test_unknown_key_is_named_with_allowed_keys():
    with pytest.raises(RecipeError, match=r"unknown key 'group_sise'.*allowed keys: name, method"):
        recipe_from_dict({"name": "x", "method": "rtn", "group_sise": 64})


def test_malformed_yaml_names_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match="bad.yaml"):
        get_recipe(str(path))
    path.write_text("name: x\nmethod: rtn\nbits: four\n")
    with pytest.raises(RecipeError, match=r"bad.yaml.*'bits'"):
        get_recipe(str(path))


def test_recipe_from_user_yaml_path(tmp_path):
    path = tmp_path / "w6.yaml"
    path.write_text("name: w6-rtn\nmethod: rtn\nbits: 6\ngroup_size: 64\n")
    recipe = get_recipe(str(path))
    assert recipe.bits == 6 and recipe.group_size == 64


def test_bits_validated_with_allowed_values():
    with pytest.raises(RecipeError, match=r"rtn supports bits \[1, 2"):
        recipe_from_dict({"name": "x", "method": "rtn", "bits": 12})


def test_register_method_decorator_and_duplicate(tmp_path):
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class ScaleConfig(RecipeConfig):
        factor: float = 1.0

    calls = []

    @register_method("test-scale", config=ScaleConfig)
    def apply_scale(model, config, calibration=None):
        calls.append(config.factor)
        return model

    recipe = recipe_from_dict({"name": "half", "method": "test-scale", "factor": 0.5})
    sentinel = object()
    assert quantsweep.quantize(sentinel, recipe) is sentinel and calls == [0.5]
    with pytest.raises(ValueError, match="already registered"):
        register_method("test-scale", config=ScaleConfig)(apply_scale)


def test_expand_grid(tmp_path, monkeypatch):
    import quantsweep.recipes as recipes

    (tmp_path / "fp.yaml").write_text("name: fp\nmethod: none\n")
    (tmp_path / "w4.yaml").write_text("name: w4\nmethod: rtn\nbits: 4\n")
    (tmp_path / "mini.yaml").write_text("grid: [fp, w4]\n")
    (tmp_path / "loop.yaml").write_text("grid: [loop]\n")
    monkeypatch.setattr(recipes, "RECIPES_DIR", tmp_path)
    assert [r.name for r in expand_recipes(["mini", "w4"])] == ["fp", "w4"]
    assert list_grids() == ["loop", "mini"]
    with pytest.raises(RecipeError, match="includes itself"):
        expand_recipes(["loop"])
    with pytest.raises(RecipeError, match="is a grid"):
        get_recipe("mini")
