"""Small files for every openpangu18 task in the public datasets' formats, and a tiny byte-level model.

Shared by tests/eval/test_offline_data.py (the suite runs offline) and tests/eval/test_lm.py
(the new scoring path gives lm-eval's numbers on the same data).

Example:
    >>> write_suite_data(tmp_path)  # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import torch

ROWS = 4  # documents per split written; the tests evaluate limit=3 of them


# ---------------------------------------------------------------- data in the public formats


def _arc_row(i: int, n_choices: int) -> dict:
    labels = ["A", "B", "C", "D", "E"][:n_choices] if i % 2 == 0 else ["1", "2", "3", "4", "5"][:n_choices]
    return {
        "id": f"Mercury_{7000 + i}",
        "question": f"Which object is heavier than a feather, case {i}?",
        "choices": {"text": [f"option {k} for {i}" for k in range(n_choices)], "label": labels},
        "answerKey": labels[i % n_choices],
    }


# ARC items have 3, 4 or 5 options; the choice counts below must come back as n_choices.
ARC_CHOICES = [4, 3, 5, 4]
HELLASWAG_CHOICES = 4
MMLU_SUBJECTS = ["abstract_algebra", "anatomy"]  # alternate, so each document's cluster is checkable


def _write_jsonl(path: Path, rows: list[dict], compress: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if compress:
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")


def _write_parquet(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path, index=False)


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)


def _write_json_list(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")


def write_suite_data(root: Path) -> Path:
    """Write small files for all 18 openpangu18 tasks under ``root`` (layout of docs/suite-and-offline-data.md)."""
    # language modelling: wikitext_document_level (parquet, column `page`), C4 (json.gz, text/timestamp/url)
    _write_parquet(
        root / "wikitext" / "test.parquet",
        [{"page": f" = Article {i} = \n The river @-@ bank held {i} @,@ 000 stones . \n"} for i in range(ROWS)],
    )
    _write_jsonl(
        root / "c4" / "validation.json.gz",
        [
            {
                "text": f"Beginners BBQ class number {i} is taking place in Missoula!",
                "timestamp": "2019-04-25 12:57:54",
                "url": f"https://example.org/{i}",
            }
            for i in range(ROWS)
        ],
        compress=True,
    )
    # commonsense and reasoning
    _write_parquet(
        root / "arc_easy" / "test-00000-of-00001.parquet", [_arc_row(i, n) for i, n in enumerate(ARC_CHOICES)]
    )
    _write_jsonl(root / "arc_challenge" / "test.jsonl", [_arc_row(i, n) for i, n in enumerate(ARC_CHOICES)])
    _write_jsonl(
        root / "hellaswag" / "validation.jsonl",
        [
            {
                "ind": 24 + i,
                "activity_label": "Roof shingle removal",
                "ctx_a": f"A man is sitting on a roof {i}.",
                "ctx_b": "he",
                "ctx": f"A man is sitting on a roof {i}. he",
                "endings": [f"ending {k}" for k in range(4)],
                "source_id": "activitynet~v_-JhWjGDPHMY",
                "split": "val",
                "split_type": "indomain",
                "label": str(i % 4),
            }
            for i in range(ROWS)
        ],
    )
    _write_parquet(
        root / "piqa" / "validation.parquet",
        [
            {
                "goal": f"How do I ready a guinea pig cage {i}?",
                "sol1": "Put bedding in it.",
                "sol2": "Put jello in it.",
                "label": i % 2,
            }
            for i in range(ROWS)
        ],
    )
    _write_jsonl(
        root / "winogrande" / "validation.jsonl",
        [
            {
                "qID": f"q{i}",
                "sentence": f"Sarah was a much better surgeon than Maria so _ always got the harder cases {i}.",
                "option1": "Sarah",
                "option2": "Maria",
                "answer": str(1 + i % 2),
            }
            for i in range(ROWS)
        ],
    )
    _write_jsonl(
        root / "boolq" / "validation.jsonl",
        [
            {
                "question": f"is the sky blue {i}",
                "passage": "The sky appears blue because of Rayleigh scattering.",
                "idx": i,
                "label": i % 2,
            }
            for i in range(ROWS)
        ],
    )
    _write_parquet(
        root / "openbookqa" / "test.parquet",
        [
            {
                "id": f"7-{i}",
                "question_stem": f"A magnet will stick to {i}",
                "choices": {"text": ["wood", "iron", "glass", "paper"], "label": ["A", "B", "C", "D"]},
                "answerKey": "B",
            }
            for i in range(ROWS)
        ],
    )
    _write_json_list(
        root / "social_iqa" / "validation.json",
        [
            {
                "context": f"Tracy didn't go home that evening {i}.",
                "question": "What does Tracy need to do?",
                "answerA": "make a plan",
                "answerB": "go home",
                "answerC": "sleep",
                "label": str(1 + i % 3),
            }
            for i in range(ROWS)
        ],
    )
    _write_jsonl(
        root / "lambada_openai" / "test.jsonl",
        [{"text": f"He held the door for her and she thanked him number {i}"} for i in range(ROWS)],
    )
    # knowledge: one file per split, all subjects, with a `subject` column
    _write_parquet(
        root / "mmlu" / "test.parquet",
        [
            {
                "question": f"Find the degree of the field extension {i}.",
                "subject": MMLU_SUBJECTS[i % 2],
                "choices": ["0", "4", "2", "6"],
                "answer": i % 4,
            }
            for i in range(ROWS)
        ],
    )
    _write_csv(
        root / "ceval" / "val.csv",
        [
            {
                "id": i,
                "question": f"下列关于会计的说法正确的是{i}",
                "A": "甲",
                "B": "乙",
                "C": "丙",
                "D": "丁",
                "answer": "ABCD"[i % 4],
                "explanation": "",
                "subject": "注册会计师",
            }
            for i in range(ROWS)
        ],
    )
    _write_csv(
        root / "cmmlu" / "test.csv",
        [
            {
                "Question": f"下列哪种植物是豆科{i}",
                "A": "大豆",
                "B": "水稻",
                "C": "小麦",
                "D": "玉米",
                "Answer": "ABCD"[i % 4],
                "subject": "农学",
            }
            for i in range(ROWS)
        ],
    )
    # math
    gsm = [
        {
            "question": f"Natalia sold clips to {i + 48} friends. How many clips did she sell?",
            "answer": f"She sold {i + 48} clips.\n#### {i + 48}",
        }
        for i in range(6)
    ]
    _write_jsonl(root / "gsm8k" / "test.jsonl", gsm[:ROWS])
    _write_jsonl(root / "gsm8k" / "train.jsonl", gsm)  # 5-shot needs at least 5 train rows
    _write_jsonl(
        root / "math" / "test.jsonl",
        [
            {
                "problem": f"What is ${i}+1$?",
                "level": "Level 1",
                "type": "Algebra",
                "solution": f"We add: ${i}+1=\\boxed{{{i + 1}}}$.",
            }
            for i in range(ROWS)
        ],
    )
    # code
    _write_jsonl(
        root / "humaneval" / "test.jsonl",
        [
            {
                "task_id": f"HumanEval/{i}",
                "prompt": f'def add_{i}(a, b):\n    """Return a + b."""\n',
                "canonical_solution": "    return a + b\n",
                "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n",
                "entry_point": f"add_{i}",
            }
            for i in range(ROWS)
        ],
    )
    mbpp = [
        {
            "task_id": t,
            "text": f"Write a function to add two numbers ({t}).",
            "code": f"def add_{t}(a, b):\r\n  return a + b",
            "test_setup_code": "",
            "test_list": [f"assert add_{t}(1, 2) == 3", f"assert add_{t}(2, 2) == 4", f"assert add_{t}(0, 0) == 0"],
            "challenge_test_list": [],
        }
        for t in range(1, 12)
    ]
    _write_jsonl(root / "mbpp" / "prompt.jsonl", mbpp[:10])  # task ids 1-10, as the public `prompt` split
    _write_jsonl(root / "mbpp" / "test.jsonl", mbpp[10:] + [dict(mbpp[0], task_id=11 + k) for k in range(2)])
    return root


# ---------------------------------------------------------------- tiny model, no network


def tiny_model_and_tokenizer():
    """A 1-layer random Llama over a byte-level vocabulary (any UTF-8 text tokenizes, Chinese included)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: index for index, symbol in enumerate(alphabet)}
    vocab["<eos>"] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<eos>")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        eos_token_id=vocab["<eos>"],
        pad_token_id=vocab["<eos>"],
        bos_token_id=None,
    )
    model = LlamaForCausalLM(config).eval()
    return model, tokenizer
