"""Bits per weight of mixed recipes: counted as the cost fields count them, within the budget, greedy by rank."""

import pytest

import quantsweep
from quantsweep.measure.cost import cost_fields
from quantsweep.sensitivity.budget import mixed_recipe, target_bits, with_bits
from quantsweep.sensitivity.units import scan_units


@pytest.fixture(scope="module")
def toy():
    model, _ = quantsweep.load_model("toy", device="cpu")
    return model


@pytest.mark.parametrize("recipe", ["w2-rtn", "w4-rtn", "w8-rtn"])
def test_target_bits_are_the_cost_fields_count(toy, recipe):
    snapshot = quantsweep.WeightSnapshot(toy)
    config = quantsweep.get_recipe(recipe)
    fields = cost_fields(toy, config, quantsweep.apply_recipe(toy, config))  # from the packed codes and scales
    snapshot.restore(toy)
    counted = target_bits(toy, config)
    fp_part = (fields["weights"] - fields["quantized_weights"]) * fields["fp_bits"]
    assert sum(n for n, _ in counted.values()) == fields["quantized_weights"]
    assert sum(b for _, b in counted.values()) == pytest.approx(fields["theoretical_bytes"] * 8 - fp_part, abs=8)


def test_mixed_recipe_promotes_in_rank_order_within_the_budget(toy):
    low = quantsweep.get_recipe("w2-rtn")
    high = with_bits(low, 4)
    units = scan_units(toy)
    ranking = [units[3], units[1], units[0], units[2]]
    low_bits, high_bits = target_bits(toy, low), target_bits(toy, high)
    weights = sum(n for n, _ in low_bits.values())

    def average(promoted):  # the test's own count: high bits under the promoted layers, low elsewhere
        chosen = [
            high_bits[n][1] if any(n.startswith(p + ".") for p in promoted) else b for n, (_, b) in low_bits.items()
        ]
        return sum(chosen) / weights

    budget = (
        average(["model.layers.3", "model.layers.1"]) + average(["model.layers.3", "model.layers.1", "model.layers.0"])
    ) / 2
    mixed = mixed_recipe(toy, low, ranking, budget=budget)
    assert mixed.promoted == ("model.layers.3", "model.layers.1")
    assert mixed.bits_per_weight == pytest.approx(average(mixed.promoted)) and mixed.bits_per_weight <= budget
    assert mixed.uniform_bits_per_weight == pytest.approx(average([]))
    assert mixed.recipe["overrides"] == [{"match": ["model.layers.3.*", "model.layers.1.*"], "bits": 4}]
    assert {k: v for k, v in mixed.recipe.items() if k not in ("name", "description", "overrides")} == {
        k: v for k, v in low.to_dict().items() if k not in ("name", "description")
    }


def test_linear_units_are_matched_by_their_exact_names(toy):
    units = scan_units(toy, "linear")
    mixed = mixed_recipe(toy, quantsweep.get_recipe("w4-rtn"), [units[5]], budget=4.5)
    assert mixed.recipe["overrides"] == [{"match": [units[5].name], "bits": 8}]


def test_a_budget_below_the_recipe_or_without_bits_is_refused(toy):
    with pytest.raises(ValueError, match="below what w4-rtn itself takes"):
        mixed_recipe(toy, quantsweep.get_recipe("w4-rtn"), scan_units(toy), budget=4.0)
    with pytest.raises(ValueError, match="has no 'bits' setting"):
        mixed_recipe(toy, quantsweep.get_recipe("w8a8-smoothquant"), scan_units(toy), budget=9.0)
    with pytest.raises(ValueError, match="rtn supports bits"):
        mixed_recipe(toy, quantsweep.get_recipe("w4-rtn"), scan_units(toy), budget=9.0, high_bits=16)


def test_the_written_recipe_runs_as_any_recipe_and_costs_what_was_planned(toy, tmp_path):
    import torch
    from planted import apply_mixed_by_hand

    from quantsweep.recipes import get_recipe

    low = quantsweep.get_recipe("w2-rtn")
    units = scan_units(toy)
    mixed = mixed_recipe(toy, low, [units[2], units[0], units[1]], budget=3.2)
    assert mixed.promoted == ("model.layers.2", "model.layers.0")
    path = tmp_path / "mixed.yaml"
    path.write_text(mixed.to_yaml())

    snapshot = quantsweep.WeightSnapshot(toy)
    apply_mixed_by_hand(toy, snapshot, low, with_bits(low, 4), mixed.promoted)
    expected = {name: tensor.clone() for name, tensor in toy.state_dict().items()}
    snapshot.restore(toy)
    recipe = get_recipe(str(path))  # read back as any recipe file is
    result = quantsweep.apply_recipe(toy, recipe)
    assert all(torch.equal(expected[name], tensor) for name, tensor in toy.state_dict().items())
    fields = cost_fields(toy, recipe, result)
    snapshot.restore(toy)
    fp_part = (fields["weights"] - fields["quantized_weights"]) * fields["fp_bits"]
    measured = (fields["theoretical_bytes"] * 8 - fp_part) / fields["quantized_weights"]
    assert measured == pytest.approx(mixed.bits_per_weight, abs=1e-5)
