"""The suggested mixed recipe beats the uniform recipe of the same or more bits, where one layer is fragile.

Perplexities are the tests' own: on text sampled from the random model itself (where the fp
model is the best predictor), and lm-eval's word perplexity of ``toy_ppl`` on the toy.
"""

import pytest
from planted import perplexity, plant_fragile_layer, sample_text, write_planted_llama

import quantsweep
from quantsweep.sensitivity.budget import target_bits


def average_bits(model, recipe) -> float:
    counted = target_bits(model, quantsweep.get_recipe(recipe))
    return sum(b for _, b in counted.values()) / sum(n for n, _ in counted.values())


@pytest.mark.slow  # an 8-layer scan and four perplexities: about a minute on a loaded 2-core machine
def test_random_model_planted_layer_first_and_mixed_beats_uniform(tmp_path, toy_text):
    fragile = 5
    model = write_planted_llama(tmp_path / "model", layers=8, fragile=fragile, scale=64.0, amplify=4.0)
    budget = average_bits(model, "w4-rtn")
    result = quantsweep.sensitivity(
        str(tmp_path / "model"),
        "w3-rtn",
        out=tmp_path / "scan",
        budget=budget,
        high_bits=8,
        text=str(toy_text),
        tokens=1024,
        seq_len=64,
        device="cpu",
    )
    assert result.rows[0]["unit"] == f"model.layers.{fragile}"
    mixed = result.mixed
    assert mixed.promoted[0] == f"model.layers.{fragile}" and mixed.bits_per_weight <= budget

    held_out = sample_text(model, n=16, length=64, seed=1)
    snapshot = quantsweep.WeightSnapshot(model)
    quantsweep.quantize(model, str(result.recipe_path))  # the written recipe, read as any recipe file is
    mixed_ppl = perplexity(model, held_out)
    snapshot.restore(model)
    quantsweep.quantize(model, "w4-rtn")
    uniform_ppl = perplexity(model, held_out)
    snapshot.restore(model)
    fp_ppl = perplexity(model, held_out)
    print(
        f"random 8-layer, fragile layer {fragile}: fp {fp_ppl:.2f}; mixed w3 + {mixed.promoted} at 8 bits "
        f"({mixed.bits_per_weight:.3f} bits/weight) {mixed_ppl:.2f}; uniform w4-rtn ({budget:.3f}) {uniform_ppl:.2f}"
    )
    assert fp_ppl < mixed_ppl < uniform_ppl


@pytest.mark.slow  # a toy scan and two toy_ppl evaluations
def test_toy_planted_layer_mixed_beats_uniform_on_word_perplexity(tmp_path, toy_text):
    model, tokenizer = quantsweep.load_model("toy", device="cpu")
    plant_fragile_layer(model, 2, scale=64.0)
    model.save_pretrained(str(tmp_path / "model"))
    tokenizer.save_pretrained(str(tmp_path / "model"))
    budget = average_bits(model, "w4-rtn")
    result = quantsweep.sensitivity(
        str(tmp_path / "model"),
        "w2-rtn",
        out=tmp_path / "scan",
        budget=budget,
        high_bits=8,
        text=str(toy_text),
        tokens=512,
        seq_len=64,
        device="cpu",
    )
    assert result.rows[0]["unit"] == "model.layers.2" and result.mixed.promoted == ("model.layers.2",)

    def word_perplexity():
        metrics = quantsweep.evaluate(model, tokenizer, tasks=["toy_ppl"], limit=200).tasks["toy_ppl"].metrics
        return metrics["word_perplexity"].value

    snapshot = quantsweep.WeightSnapshot(model)
    quantsweep.quantize(model, str(result.recipe_path))
    mixed_ppl = word_perplexity()
    snapshot.restore(model)
    quantsweep.quantize(model, "w4-rtn")
    uniform_ppl = word_perplexity()
    print(
        f"toy, fragile layer 2: mixed w2 + layer 2 at 8 bits ({result.mixed.bits_per_weight:.3f} bits/weight) "
        f"{mixed_ppl:.3f}; uniform w4-rtn ({budget:.3f}) {uniform_ppl:.3f}"
    )
    assert mixed_ppl < uniform_ppl
