"""A deterministic synthetic world of entities and facts, and the texts written about it.

The toy model learns this world. Every entity name is three syllables drawn from a
small syllable set, so no single embedding row identifies an entity: the model has
to compose the name inside its decoder layers, which is where quantization bites.
Each entity has one value for each attribute; values are assigned in equal counts,
so a model that has forgotten the facts cannot beat chance by guessing the most
frequent value. They are also balanced within every group of entities that share a
syllable in one position, so one syllable alone says (almost) nothing about a value:
without balancing, the value mix of such a group is uneven enough that a model keeping
only (attribute, syllable) associations scores ~0.37 on 4-way choice, well above
chance, and that shortcut is what a badly damaged (e.g. binarized) model falls back on.
With balancing that lookup scores ~0.27.

Example:
    >>> world = make_world()
    >>> fact = world.facts[0]
    >>> fact
    Fact(entity='po ba fe', attribute='color', value='purple')
    >>> render_fact(fact, template=0)
    'the color of po ba fe is purple .'
    >>> len(world.entities), len(world.facts)  # one fact per (entity, attribute)
    (400, 1600)
"""

from __future__ import annotations

import functools
import itertools
import random
from dataclasses import dataclass

SYLLABLES = ("ba", "ko", "mi", "ru", "te", "lo", "ni", "sa", "du", "fe", "gi", "po")
NAME_LENGTH = 3  # syllables (= tokens) per entity name

# attribute -> (values, templates). Every template ends with "{value} ." so the value is
# always a one-word continuation of the text before it.
ATTRIBUTES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "color": (
        ("red", "blue", "green", "yellow", "black", "white", "orange", "purple"),
        ("the color of {entity} is {value} .", "{entity} likes the color {value} ."),
    ),
    "city": (
        ("paris", "tokyo", "cairo", "lima", "oslo", "rome", "delhi", "quito"),
        ("{entity} lives in {value} .", "the home of {entity} is {value} ."),
    ),
    "pet": (
        ("cat", "dog", "fish", "bird", "horse", "snake", "rabbit", "mouse"),
        ("the pet of {entity} is a {value} .", "{entity} owns a {value} ."),
    ),
    "job": (
        ("baker", "farmer", "doctor", "singer", "pilot", "teacher", "painter", "sailor"),
        ("{entity} works as a {value} .", "the job of {entity} is {value} ."),
    ),
}
N_TEMPLATES = 2

DEFAULT_N_ENTITIES = 400
DEFAULT_WORLD_SEED = 1234


@dataclass(frozen=True)
class Fact:
    """One (entity, attribute, value) triple.

    Example:
        >>> Fact("ba ko mi", "color", "red").attribute
        'color'
    """

    entity: str
    attribute: str
    value: str


@dataclass(frozen=True)
class World:
    """Entities and their facts, in a fixed order.

    Attributes:
        entities: entity names, each ``NAME_LENGTH`` space-separated syllables.
        facts: one fact per (entity, attribute), entity-major order.
        seed: the seed the world was drawn with.

    Example:
        >>> w = make_world()  # the default world is cached: examples and tasks share it
        >>> len(w.facts) == 4 * len(w.entities)
        True
    """

    entities: tuple[str, ...]
    facts: tuple[Fact, ...]
    seed: int

    def facts_of(self, entity: str) -> tuple[Fact, ...]:
        """The facts about one entity, in attribute order.

        Example:
            >>> w = make_world()
            >>> [f.attribute for f in w.facts_of(w.entities[0])]
            ['color', 'city', 'pet', 'job']
        """
        if entity not in self.entities:
            raise ValueError(f"unknown entity {entity!r}; the world has {len(self.entities)} entities")
        index = self.entities.index(entity)
        n = len(ATTRIBUTES)
        return self.facts[index * n : (index + 1) * n]


@functools.lru_cache(maxsize=8)  # balancing takes ~1 s; tasks and training ask for the same world often
def make_world(n_entities: int = DEFAULT_N_ENTITIES, seed: int = DEFAULT_WORLD_SEED) -> World:
    """Draw a world deterministically: same arguments, same world, on any machine.

    Uses only :class:`random.Random` (a documented, stable generator) so the world does
    not depend on torch or numpy versions.

    Example:
        >>> make_world().entities[:3]  # the same names on every machine
        ('po ba fe', 'ni ru mi', 'ko sa po')
    """
    max_entities = len(SYLLABLES) ** NAME_LENGTH
    if not 1 <= n_entities <= max_entities:
        raise ValueError(f"n_entities must be in 1..{max_entities}, got {n_entities}")
    rng = random.Random(seed)
    names = [" ".join(parts) for parts in itertools.product(SYLLABLES, repeat=NAME_LENGTH)]
    entities = tuple(rng.sample(names, n_entities))
    values_by_attribute = {}
    for attribute, (values, _) in ATTRIBUTES.items():
        # equal counts of every value (up to rounding), in random order
        pool = [values[i % len(values)] for i in range(n_entities)]
        rng.shuffle(pool)
        values_by_attribute[attribute] = pool
    balance_rng = random.Random(seed + 7)
    for attribute, (values, _) in ATTRIBUTES.items():
        _balance_within_syllable_groups(entities, values_by_attribute[attribute], values, balance_rng)
    facts = tuple(
        Fact(entity, attribute, values_by_attribute[attribute][i])
        for i, entity in enumerate(entities)
        for attribute in ATTRIBUTES
    )
    return World(entities=entities, facts=facts, seed=seed)


BALANCE_PROPOSALS = 300_000  # swap proposals per attribute; enough to reach counts within 1 of even


def _balance_within_syllable_groups(
    entities: tuple[str, ...], assigned: list[str], values: tuple[str, ...], rng: random.Random
) -> None:
    """Swap values between entities (in place) until each syllable group has an even value mix.

    A group is the entities sharing syllable ``s`` in name position ``p``. The cost is
    the sum over (p, s, value) of count**2, which is smallest when counts are even;
    swapping two entities' values keeps every value's total count. A proposal is kept
    when it lowers the cost, and with probability 1/2 when it leaves it unchanged.
    Deterministic for a given ``rng`` state.
    """
    syllable_index = {syllable: k for k, syllable in enumerate(SYLLABLES)}
    value_index = {value: k for k, value in enumerate(values)}
    n_values = len(values)
    # group_slots[i][p]: offset of entity i's (position p, syllable) group in `counts`
    group_slots = [
        [(p * len(SYLLABLES) + syllable_index[syllable]) * n_values for p, syllable in enumerate(entity.split())]
        for entity in entities
    ]
    codes = [value_index[value] for value in assigned]
    counts = [0] * (NAME_LENGTH * len(SYLLABLES) * n_values)
    for slots, code in zip(group_slots, codes):
        for slot in slots:
            counts[slot + code] += 1
    n = len(entities)
    for _ in range(BALANCE_PROPOSALS):
        i = rng.randrange(n)
        j = rng.randrange(n)
        a, b = codes[i], codes[j]
        if a == b:
            continue
        delta = 0
        for slot_i, slot_j in zip(group_slots[i], group_slots[j]):
            if slot_i != slot_j:  # a shared syllable: the swap leaves that group unchanged
                # each of the four counts moves by one: (c +- 1)**2 - c**2 = +-2c + 1
                delta += (
                    4
                    - 2 * counts[slot_i + a]
                    + 2 * counts[slot_i + b]
                    - 2 * counts[slot_j + b]
                    + 2 * counts[slot_j + a]
                )
        if delta < 0 or (delta == 0 and rng.random() < 0.5):
            for slot_i, slot_j in zip(group_slots[i], group_slots[j]):
                if slot_i != slot_j:
                    counts[slot_i + a] -= 1
                    counts[slot_i + b] += 1
                    counts[slot_j + b] -= 1
                    counts[slot_j + a] += 1
            codes[i], codes[j] = b, a
    assigned[:] = [values[code] for code in codes]


def render_prompt(fact: Fact, template: int) -> str:
    """The text of a fact up to (not including) the space before its value.

    Example:
        >>> render_prompt(Fact("ba ko mi", "color", "red"), 0)
        'the color of ba ko mi is'
    """
    text = _template(fact.attribute, template).split(" {value}")[0]
    return text.format(entity=fact.entity)


def render_fact(fact: Fact, template: int) -> str:
    """A fact as one sentence (no newline).

    Example:
        >>> render_fact(Fact("ba ko mi", "pet", "cat"), 1)
        'ba ko mi owns a cat .'
    """
    return _template(fact.attribute, template).format(entity=fact.entity, value=fact.value)


def _template(attribute: str, template: int) -> str:
    if attribute not in ATTRIBUTES:
        raise ValueError(f"unknown attribute {attribute!r}; allowed: {sorted(ATTRIBUTES)}")
    templates = ATTRIBUTES[attribute][1]
    if not 0 <= template < len(templates):
        raise ValueError(f"template must be in 0..{len(templates) - 1}, got {template}")
    return templates[template]


def render_bio(world: World, entity: str, rng: random.Random) -> str:
    """Everything about one entity: its facts in random order and phrasing, one per line.

    Example:
        >>> w = make_world()
        >>> render_bio(w, w.entities[0], random.Random(0)).count("\\n")
        4
    """
    facts = list(world.facts_of(entity))
    rng.shuffle(facts)
    return "".join(render_fact(fact, rng.randrange(N_TEMPLATES)) + "\n" for fact in facts)


def vocabulary() -> list[str]:
    """Every word the world's texts can contain, in a fixed order.

    Example:
        >>> "red" in vocabulary() and "ba" in vocabulary()
        True
    """
    words: list[str] = list(SYLLABLES)
    for values, templates in ATTRIBUTES.values():
        words.extend(values)
        for template in templates:
            words.extend(w for w in template.split() if not w.startswith("{"))
    return list(dict.fromkeys(words))  # de-duplicate, keep first occurrence order


def bios_stream(world: World, seed: int):
    """An endless, deterministic stream of entity bios: epochs over shuffled entities.

    Example:
        >>> stream = bios_stream(make_world(), seed=0)
        >>> next(stream).endswith(".\\n")
        True
    """
    rng = random.Random(seed)
    entities = list(world.entities)
    while True:
        rng.shuffle(entities)
        for entity in entities:
            yield render_bio(world, entity, rng)
