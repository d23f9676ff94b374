"""Chapter 02: SQuAD v2 records, the prompt, tokenization with the loss on the answer only, context truncation,
bad records, and padding to the longest (loaded from the chapter's notebook)."""

import json

import pytest
import torch
from transformers import AutoTokenizer

from tools.nbexport import load
from utils.errors import CourseError
from utils.smoke import fixture_path, tiny_checkpoint

SQUAD = load("02-lora-gptj/01_lora_gptj_squad.ipynb")  # chapter 02's SQuAD code, from its notebook
INSTRUCTION = SQUAD.INSTRUCTION
NO_ANSWER = SQUAD.NO_ANSWER
collate_squad_batch = SQUAD.collate_squad_batch
encode_example = SQUAD.encode_example
encode_records = SQUAD.encode_records
flatten_squad = SQUAD.flatten_squad
load_squad = SQUAD.load_squad
prompt_parts = SQUAD.prompt_parts
target_text = SQUAD.target_text


@pytest.fixture(scope="module")
def tokenizer():
    tok = AutoTokenizer.from_pretrained(tiny_checkpoint("gptj"))
    tok.pad_token = tok.eos_token
    return tok


@pytest.fixture(scope="module")
def train_records():
    return load_squad(fixture_path("squad_train"), "train")


def test_flatten_reads_every_paragraph_of_every_article():
    squad = json.loads(fixture_path("squad_train").read_text())
    records = flatten_squad(squad)
    expected = [(a["title"], p["context"], q["id"]) for a in squad["data"] for p in a["paragraphs"] for q in p["qas"]]
    assert [(r["title"], r["context"], r["id"]) for r in records] == expected
    assert len({r["context"] for r in records}) == sum(len(a["paragraphs"]) for a in squad["data"]) > len(squad["data"])
    assert set(records[0]) == {"id", "title", "context", "question", "answers"}
    impossible = {q["id"] for a in squad["data"] for p in a["paragraphs"] for q in p["qas"] if q["is_impossible"]}
    assert impossible and all((r["answers"]["text"] == []) == (r["id"] in impossible) for r in records)


def test_flatten_keeps_several_gold_answers_and_drops_plausible_answers():
    squad = {"data": [{"title": "T", "paragraphs": [{"context": "Ab cd", "qas": [
        {"id": "1", "question": "q?", "is_impossible": False,
         "answers": [{"text": "Ab", "answer_start": 0}, {"text": "cd", "answer_start": 3}]},
        {"id": "2", "question": "q2?", "is_impossible": True, "answers": [],
         "plausible_answers": [{"text": "Ab", "answer_start": 0}]}]}]}]}
    first, second = flatten_squad(squad)
    assert first["answers"] == {"text": ["Ab", "cd"], "answer_start": [0, 3]}
    assert second["answers"] == {"text": [], "answer_start": []}


def test_load_squad_slices_and_shuffles_reproducibly():
    def ids(**kwargs):
        return [r["id"] for r in load_squad(fixture_path("squad_train"), "train", **kwargs)]

    in_file_order = [r["id"] for r in flatten_squad(json.loads(fixture_path("squad_train").read_text()))]
    everything, first_ten = ids(seed=1), ids(n=10, seed=1)
    assert first_ten == ids(n=10, seed=1) and len(first_ten) == 10  # the same seed, the same records
    assert first_ten == everything[:10]  # n takes the first records of the shuffled order
    assert sorted(everything) == sorted(in_file_order) and len(everything) == 45  # every record, once
    assert everything != in_file_order  # shuffled, not in the file's order
    assert ids(seed=2) != everything and ids(n=10, seed=2) != first_ten  # the seed decides the order


def test_prompt_template(train_records):
    answerable = next(r for r in train_records if r["answers"]["text"])
    unanswerable = next(r for r in train_records if not r["answers"]["text"])
    head, context, tail = prompt_parts(answerable)
    prompt = head + context + tail
    assert prompt.startswith(INSTRUCTION) and prompt.endswith("\nanswer:")
    assert prompt.index(context) < prompt.index(answerable["question"])
    assert target_text(answerable) == " " + answerable["answers"]["text"][0]
    assert target_text(unanswerable) == " " + NO_ANSWER


def test_labels_only_on_answer_and_eos(tokenizer, train_records):
    for record in train_records:
        example = encode_example(record, tokenizer, 256)
        head, context, tail = prompt_parts(record)
        prompt_ids = tokenizer(head + context + tail, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(target_text(record), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        # the pieces tokenize exactly like the whole text: train and inference prompts are the same tokens
        assert example["input_ids"] == prompt_ids + answer_ids
        assert example["labels"] == [-100] * len(prompt_ids) + answer_ids
        assert example["context_tokens_cut"] == 0
        inference = encode_example(record, tokenizer, 256, with_answer=False)
        assert inference["input_ids"] == prompt_ids and all(label == -100 for label in inference["labels"])


def test_too_long_prompt_cuts_the_context_only(tokenizer, train_records):
    record = next(r for r in train_records if r["answers"]["text"] and r["answers"]["answer_start"][0] > 60)
    whole = encode_example(record, tokenizer, 256)
    short = encode_example(record, tokenizer, len(whole["input_ids"]) - 30)
    assert len(short["input_ids"]) == len(whole["input_ids"]) - 30 and short["context_tokens_cut"] == 30
    text = tokenizer.decode(short["input_ids"])
    assert text.startswith(INSTRUCTION + "\ncontext:\n")
    assert f"\nquestion: {record['question']}\nanswer: {record['answers']['text'][0]}<|endoftext|>" in text
    # the kept context window still contains the answer, so the label is still true
    kept_context = text.split("\ncontext:\n", 1)[1].split("\nquestion:", 1)[0]
    assert record["answers"]["text"][0] in kept_context and kept_context in record["context"]
    # the labels are unchanged: the same answer tokens and end-of-text
    assert [t for t in short["labels"] if t != -100] == [t for t in whole["labels"] if t != -100]
    # at inference (no answer known) the context is cut from its end
    prompt_only = encode_example(record, tokenizer, 256, with_answer=False)
    cut = encode_example(record, tokenizer, len(prompt_only["input_ids"]) - 30, with_answer=False)
    kept = tokenizer.decode(cut["input_ids"]).split("\ncontext:\n", 1)[1].split("\nquestion:", 1)[0]
    assert record["context"].startswith(kept) and cut["context_tokens_cut"] == 30


def _good(train_records):
    return next(r for r in train_records if r["answers"]["text"])


def test_bad_records_are_named(tokenizer, train_records):
    good = _good(train_records)
    shifted = {**good, "id": "bad-offset",
               "answers": {"text": good["answers"]["text"], "answer_start": [good["answers"]["answer_start"][0] + 2]}}
    with pytest.raises(CourseError, match=r"record bad-offset: answers.answer_start\[0\]"):
        encode_example(shifted, tokenizer, 256)
    with pytest.raises(CourseError, match="record bad-context: field 'context' is empty"):
        encode_example({**good, "id": "bad-context", "context": " \n"}, tokenizer, 256)
    with pytest.raises(CourseError, match="record bad-question: instruction, question and answer alone take"):
        encode_example({**good, "id": "bad-question", "question": "why " * 300}, tokenizer, 256)


def test_encode_records_skips_with_a_count_then_fails_when_too_many_are_bad(tokenizer, train_records):
    bad = {**_good(train_records), "id": "bad-context", "context": ""}
    encoded, skipped = encode_records(train_records + [bad], tokenizer, 256, max_skip_fraction=0.05)
    assert len(encoded) == len(train_records) and len(skipped) == 1 and "bad-context" in skipped[0]
    with pytest.raises(CourseError, match="1 of 46 records are unusable"):
        encode_records(train_records + [bad], tokenizer, 256)  # default: at most 1%


def test_collate_pads_to_the_longest(tokenizer, train_records):
    examples = [encode_example(r, tokenizer, 256) for r in train_records[:3]]
    batch = collate_squad_batch(examples, tokenizer.pad_token_id)
    lengths = [len(e["input_ids"]) for e in examples]
    assert batch["input_ids"].shape == (3, max(lengths))
    for row, example in enumerate(examples):
        n = lengths[row]
        assert batch["input_ids"][row, :n].tolist() == example["input_ids"]
        assert batch["labels"][row, :n].tolist() == example["labels"]
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (max(lengths) - n)
        assert (batch["labels"][row, n:] == -100).all() and (batch["input_ids"][row, n:] == tokenizer.pad_token_id).all()
    assert batch["input_ids"].dtype == torch.long


def test_the_bad_record_demo_cut_fits_every_record_at_gpt2s_real_bpe():
    """The notebook's demo cuts half the context of the record with the longest one; a fixed cut of 40 tokens, as it
    had, fails at GPT-J's real tokenizer (the GPT-2 BPE), where some fixture contexts are shorter than that."""
    from tools.real_width import gpt2_tokenizer

    tok = AutoTokenizer.from_pretrained(gpt2_tokenizer())
    records = [r for r in load_squad(fixture_path("squad_train"), "train") if r["answers"]["text"]]
    lengths = {r["id"]: len(tok(r["context"], add_special_tokens=False)["input_ids"]) for r in records}
    shortest = min(records, key=lambda r: lengths[r["id"]])
    assert lengths[shortest["id"]] < 40
    with pytest.raises(CourseError, match="more than max_length"):  # what the old demo hit at real widths
        encode_example(shortest, tok, max_length=len(encode_example(shortest, tok, 512)["input_ids"]) - 40)
    good = max(records, key=lambda r: len(r["context"]))  # the notebook's choice
    whole = encode_example(good, tok, 512)
    short = encode_example(good, tok, max_length=len(whole["input_ids"]) - lengths[good["id"]] // 2)
    assert short["context_tokens_cut"] == lengths[good["id"]] // 2
    answer = [label for label in whole["labels"] if label != -100]
    assert [label for label in short["labels"] if label != -100] == answer  # the answer kept whole
