"""The toy tokenizer: word-level, exact round trip, and the split lm-eval relies on."""

import random

from transformers import AutoTokenizer

from quantsweep.toy import calibration_texts
from quantsweep.toy.tokenizer import build_tokenizer
from quantsweep.toy.world import bios_stream, make_world


def test_special_tokens():
    tok = build_tokenizer()
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.encode("the color", add_special_tokens=True) == tok.encode("the color")  # adds nothing


def test_round_trip_of_training_text_and_continuations():
    tok = build_tokenizer()
    stream = bios_stream(make_world(n_entities=40), seed=0)
    for _ in range(40):
        text = next(stream)
        ids = tok.encode(text)
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == text
    for piece in (" red", " red .\n", "\n", "ba ko mi lives in"):
        assert tok.decode(tok.encode(piece)) == piece


def test_one_token_per_word_and_space_marked_forms():
    tok = build_tokenizer()
    assert tok.convert_ids_to_tokens(tok.encode("the color of ba ko mi is red .\n")) == [
        "the",
        "▁color",
        "▁of",
        "▁ba",
        "▁ko",
        "▁mi",
        "▁is",
        "▁red",
        "▁.",
        "\n",
    ]


def test_context_plus_continuation_splits_at_the_word_boundary():
    # lm-eval encodes context+continuation and takes the tail after len(encode(context))
    tok = build_tokenizer()
    rng = random.Random(0)
    for text in calibration_texts(5):
        words = text.split(" ")
        cut = rng.randrange(1, len(words))
        context, continuation = " ".join(words[:cut]), " " + " ".join(words[cut:])
        whole = tok.encode(context + continuation)
        assert whole[: len(tok.encode(context))] == tok.encode(context)
        assert whole[len(tok.encode(context)) :] == tok.encode(continuation)


def test_unknown_words_map_to_unk():
    tok = build_tokenizer()
    assert tok.encode("zebra") == [tok.unk_token_id]


def test_save_and_reload_with_auto_tokenizer(tmp_path):
    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = calibration_texts(1)[0]
    assert again.encode(text) == tok.encode(text)
    assert again.decode(again.encode(text)) == text
    assert again.bos_token == "<s>" and again.eos_token == "</s>" and again.pad_token == "<pad>"
