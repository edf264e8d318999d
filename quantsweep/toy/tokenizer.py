"""The toy model's word-level tokenizer, built from the world's vocabulary.

One token per word. A word that follows a space is a different token (``"▁red"``)
from the same word at the start of a line (``"red"``), exactly as sentencepiece
does it, so decoding restores every space and newline and exact-match scoring of
generated text works. Newline is a token of its own.

Example:
    >>> tok = build_tokenizer()
    >>> tok.convert_ids_to_tokens(tok.encode(" red ."))
    ['▁red', '▁.']
    >>> tok.decode(tok.encode("the color of ba ko mi is red .\\n"))
    'the color of ba ko mi is red .\\n'
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from quantsweep.toy.world import vocabulary

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0..3, in this order
SPACE_MARK = "▁"  # U+2581, marks "a space came before this word"
MAX_LENGTH = 512  # tokens; equals the model's max_position_embeddings


def build_tokenizer(words: list[str] | None = None) -> PreTrainedTokenizerFast:
    """A ``PreTrainedTokenizerFast`` over ``words`` (default: the world's vocabulary).

    The tokenizer adds no special tokens when encoding; lm-eval supplies BOS itself
    as the prefix of rolling log-likelihood windows.

    Example:
        >>> build_tokenizer(["hi"]).convert_ids_to_tokens([0, 1, 2, 3, 4, 5, 6])
        ['<pad>', '<s>', '</s>', '<unk>', '\\n', 'hi', '▁hi']
    """
    words = vocabulary() if words is None else list(words)
    vocab: dict[str, int] = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    vocab["\n"] = len(vocab)
    for word in words:
        if not word or any(ch.isspace() for ch in word) or SPACE_MARK in word:
            raise ValueError(f"vocabulary words must be non-empty without whitespace or {SPACE_MARK!r}, got {word!r}")
        for form in (word, SPACE_MARK + word):
            vocab.setdefault(form, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("\n", behavior="isolated"),
            pre_tokenizers.Metaspace(replacement=SPACE_MARK, prepend_scheme="never", split=True),
        ]
    )
    backend.decoder = decoders.Metaspace(replacement=SPACE_MARK, prepend_scheme="never")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
        model_max_length=MAX_LENGTH,
    )
