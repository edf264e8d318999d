"""The synthetic world: deterministic, balanced, and fully covered by the tokenizer vocabulary."""

import collections
import random

import pytest

from quantsweep.toy.world import (
    ATTRIBUTES,
    NAME_LENGTH,
    SYLLABLES,
    Fact,
    bios_stream,
    make_world,
    render_bio,
    render_fact,
    render_prompt,
    vocabulary,
)


def test_world_is_deterministic_and_seed_dependent():
    draw = make_world.__wrapped__  # bypass the cache: two independent draws
    assert draw() == draw()
    assert make_world(seed=1) != make_world(seed=2)
    assert make_world(n_entities=50).entities == make_world(n_entities=50).entities


def test_default_world_shape():
    world = make_world()
    assert len(world.entities) == 400
    assert len(set(world.entities)) == 400
    assert len(world.facts) == 400 * len(ATTRIBUTES)
    for name in world.entities:
        parts = name.split(" ")
        assert len(parts) == NAME_LENGTH and set(parts) <= set(SYLLABLES)


def test_values_are_balanced_so_a_forgetful_model_gets_chance():
    world = make_world()
    for attribute, (values, _) in ATTRIBUTES.items():
        counts = collections.Counter(f.value for f in world.facts if f.attribute == attribute)
        assert set(counts) == set(values)
        assert max(counts.values()) - min(counts.values()) <= 1


def test_values_are_balanced_within_every_syllable_group():
    world = make_world()
    for attribute, (values, _) in ATTRIBUTES.items():
        for position in range(NAME_LENGTH):
            groups = collections.defaultdict(collections.Counter)
            for fact in world.facts:
                if fact.attribute == attribute:
                    groups[fact.entity.split(" ")[position]][fact.value] += 1
            for counts in groups.values():
                spread = max(counts[v] for v in values) - min(counts[v] for v in values)
                assert spread <= 2, (attribute, position, counts)


def test_one_syllable_does_not_predict_a_value():
    """An (attribute, syllable) lookup, the shortcut a damaged model keeps, scores near chance.

    Reference: for each 4-way question, pick the choice seen most often among the
    entities that share the name's syllable in one position (ties split evenly).
    """
    from quantsweep.toy.tasks import mc_docs

    world = make_world()
    docs = mc_docs(4)
    for position in range(NAME_LENGTH):
        counts = collections.defaultdict(collections.Counter)
        for fact in world.facts:
            counts[(fact.attribute, fact.entity.split(" ")[position])][fact.value] += 1
        score = 0.0
        for doc in docs:
            group = counts[(doc["attribute"], doc["entity"].split(" ")[position])]
            seen = [group[choice] for choice in doc["choices"]]
            best = [k for k, c in enumerate(seen) if c == max(seen)]
            score += (doc["gold"] in best) / len(best)
        assert score / len(docs) < 0.28, (position, score / len(docs))  # the README quotes this bound


def test_facts_of_returns_each_attribute_once():
    world = make_world(n_entities=20)
    facts = world.facts_of(world.entities[7])
    assert [f.attribute for f in facts] == list(ATTRIBUTES)
    assert all(f.entity == world.entities[7] for f in facts)
    with pytest.raises(ValueError, match="unknown entity"):
        world.facts_of("no such one")


def test_prompt_is_the_fact_text_before_the_value():
    fact = Fact("ba ko mi", "job", "pilot")
    for template in range(2):
        assert render_fact(fact, template) == render_prompt(fact, template) + " pilot ."


def test_bad_arguments_name_the_allowed_values():
    with pytest.raises(ValueError, match="n_entities"):
        make_world(n_entities=0)
    with pytest.raises(ValueError, match="allowed"):
        render_fact(Fact("ba ko mi", "height", "tall"), 0)
    with pytest.raises(ValueError, match="template"):
        render_prompt(Fact("ba ko mi", "job", "pilot"), 5)


def test_bios_stream_is_deterministic_and_uses_only_the_vocabulary():
    world = make_world(n_entities=30)
    a, b = bios_stream(world, seed=3), bios_stream(world, seed=3)
    texts = [next(a) for _ in range(60)]
    assert texts == [next(b) for _ in range(60)]
    # one epoch covers every entity exactly once
    first_epoch = [t.split("\n")[0] for t in texts[:30]]
    assert len(first_epoch) == 30
    words = set(vocabulary())
    for text in texts:
        assert set(text.split()) <= words
        assert text.count("\n") == len(ATTRIBUTES)


def test_render_bio_states_every_fact():
    world = make_world(n_entities=5)
    entity = world.entities[2]
    bio = render_bio(world, entity, random.Random(0))
    for fact in world.facts_of(entity):
        assert any(render_fact(fact, t) in bio for t in range(2))
