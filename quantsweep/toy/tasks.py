"""Documents of the four toy lm-eval tasks, built from the synthetic world at load time.

- ``toy_mc4``: complete a fact with one of 4 values of its attribute (chance 1/4).
- ``toy_mc2``: the same in the second phrasing, one of 2 values (chance 1/2).
- ``toy_gen``: generate the value; scored by exact match.
- ``toy_ppl``: perplexity of entity bios rendered with a seed that training never used.

The task YAML in ``tasks/toy/`` reach these through ``custom_dataset: !function``;
lm-eval calls them with the task's metadata as keyword arguments. ``n_entities`` and
``world_seed`` there select another world (for a model trained with other settings,
e.g. ``TaskManager(include_path=..., metadata={"n_entities": 1000})``); other keys
are ignored.

Example:
    >>> docs = mc_docs(n_choices=4)
    >>> len(docs[0]["choices"]), docs[0]["gold"] in range(4)
    (4, True)
"""

from __future__ import annotations

import random

from quantsweep.toy.world import (
    ATTRIBUTES,
    DEFAULT_N_ENTITIES,
    DEFAULT_WORLD_SEED,
    World,
    bios_stream,
    make_world,
    render_prompt,
)

SPLIT = "test"
MC_DOCS = 1600  # at most; the facts of the first MC_DOCS / 4 entities (entity order is random)
GEN_DOCS = 200
PPL_DOCS = 80
BIOS_PER_PPL_DOC = 4
# Seeds for streams of bios. Training draws its stream with the training seed (0 by
# default); these are far from any seed a user would train with.
PPL_STREAM_SEED = 1_000_003
CALIBRATION_STREAM_SEED = 2_000_003


def mc_docs(
    n_choices: int,
    template: int = 0,
    n_entities: int = DEFAULT_N_ENTITIES,
    world_seed: int = DEFAULT_WORLD_SEED,
    max_docs: int = MC_DOCS,
) -> list[dict]:
    """One multiple-choice doc per fact (up to ``max_docs``): the true value and ``n_choices - 1`` others.

    Distractors are other values of the same attribute, so knowing which kind of
    word comes next does not help; the gold position is random.

    Example:
        >>> doc = mc_docs(2, template=1)[0]
        >>> sorted(doc)
        ['attribute', 'choices', 'entity', 'gold', 'query']
    """
    n_values = min(len(values) for values, _ in ATTRIBUTES.values())
    if not 2 <= n_choices <= n_values:
        raise ValueError(f"n_choices must be in 2..{n_values}, got {n_choices}")
    world = make_world(n_entities, world_seed)
    rng = random.Random(world_seed * 100 + n_choices * 10 + template)
    docs = []
    for fact in world.facts[:max_docs]:
        values = ATTRIBUTES[fact.attribute][0]
        others = rng.sample([v for v in values if v != fact.value], n_choices - 1)
        gold = rng.randrange(n_choices)
        choices = others[:gold] + [fact.value] + others[gold:]
        docs.append(
            {
                "query": render_prompt(fact, template),
                "choices": choices,
                "gold": gold,
                "entity": fact.entity,
                "attribute": fact.attribute,
            }
        )
    return docs


def gen_docs(
    n_docs: int = GEN_DOCS, n_entities: int = DEFAULT_N_ENTITIES, world_seed: int = DEFAULT_WORLD_SEED
) -> list[dict]:
    """Generation docs: a fact prompt and its value, which follows after one space.

    ``answer`` carries that leading space, so exact match compares the decoded
    generation as it is, without stripping.

    Example:
        >>> gen_docs(1)[0]["answer"].startswith(" ")
        True
    """
    world = make_world(n_entities, world_seed)
    if not 1 <= n_docs <= len(world.facts):
        raise ValueError(f"n_docs must be in 1..{len(world.facts)}, got {n_docs}")
    rng = random.Random(world_seed * 100 + 7)
    facts = rng.sample(list(world.facts), n_docs)
    return [
        {
            "query": render_prompt(fact, 0),
            "answer": " " + fact.value,
            "entity": fact.entity,
            "attribute": fact.attribute,
        }
        for fact in facts
    ]


def bio_texts(n_texts: int, bios_per_text: int, stream_seed: int, world: World | None = None) -> list[str]:
    """Texts of ``bios_per_text`` entity bios each, drawn deterministically.

    Example:
        >>> bio_texts(2, 1, stream_seed=0)[0].endswith(".\\n")
        True
    """
    if n_texts < 0 or bios_per_text < 1:
        raise ValueError(f"need n_texts >= 0 and bios_per_text >= 1, got {n_texts} and {bios_per_text}")
    stream = bios_stream(world or make_world(), seed=stream_seed)
    return ["".join(next(stream) for _ in range(bios_per_text)) for _ in range(n_texts)]


def ppl_docs(
    n_docs: int = PPL_DOCS, n_entities: int = DEFAULT_N_ENTITIES, world_seed: int = DEFAULT_WORLD_SEED
) -> list[dict]:
    """Held-out plain text for perplexity: bios in orders and phrasings drawn with an unused seed.

    The facts are the ones the model was trained on (it is a knowledge model), so
    perplexity measures how much of that knowledge and language survives.

    Example:
        >>> ppl_docs(1)[0]["text"].count("\\n")
        16
    """
    world = make_world(n_entities, world_seed)
    return [{"text": text} for text in bio_texts(n_docs, BIOS_PER_PPL_DOC, PPL_STREAM_SEED, world)]


def _dataset(docs: list[dict]):
    import datasets

    return {SPLIT: datasets.Dataset.from_list(docs)}


def _world_args(metadata: dict) -> dict:
    """The world-selecting keys of lm-eval task metadata, as ints."""
    return {key: int(metadata[key]) for key in ("n_entities", "world_seed") if key in metadata}


def toy_mc4_dataset(**metadata):
    """lm-eval ``custom_dataset`` for ``toy_mc4``: ``{"test": Dataset}``, one doc per fact.

    Example:
        >>> len(toy_mc4_dataset(version=1.0)["test"])
        1600
    """
    return _dataset(mc_docs(4, template=0, **_world_args(metadata)))


def toy_mc2_dataset(**metadata):
    """lm-eval ``custom_dataset`` for ``toy_mc2`` (second phrasing, 2 choices).

    Example:
        >>> toy_mc2_dataset()["test"][0]["choices"].__len__()
        2
    """
    return _dataset(mc_docs(2, template=1, **_world_args(metadata)))


def toy_gen_dataset(**metadata):
    """lm-eval ``custom_dataset`` for ``toy_gen``.

    Example:
        >>> len(toy_gen_dataset()["test"])
        200
    """
    return _dataset(gen_docs(**_world_args(metadata)))


def toy_ppl_dataset(**metadata):
    """lm-eval ``custom_dataset`` for ``toy_ppl``.

    Example:
        >>> len(toy_ppl_dataset()["test"])
        80
    """
    return _dataset(ppl_docs(**_world_args(metadata)))
