"""The checks behind chapter 02's SQuAD code, which its notebook imports and names: a SQuAD file (the official JSON
layout or the Hub's flat records), one record, the arguments, the skip policy for records that do not fit, and a set
of predictions; the one named check call at the top of each taught function (check_load_args, check_encode_args,
check_records_args, check_collate_args, check_train_args), the run's paths (check_run_paths) and a saved adapter
(check_saved_adapter). Each fails with a CourseError naming the file, the record and the field, or a
CourseArgumentError naming the function and the argument. The lesson itself (the prompt, the labels, the padding,
the metric) is written in the notebook.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from utils.checks import bad_argument, check_field, check_flag, check_fraction, check_int, load_safetensors, read_json
from utils.errors import CourseArgumentError, CourseError


def check_squad_fields(record, where: str, nonempty: bool = False) -> None:
    """CourseError naming `where` and the field unless `record` is a flat SQuAD record (id, title, context, question,
    answers {text: [str], answer_start: [int >= 0]}; context and question not blank when `nonempty`)."""
    for name in ("id", "title", "context", "question"):
        check_field(record, name, where, nonempty=name == "id" or (nonempty and name != "title"))
    answers = check_field(record, "answers", where, kind=dict, nonempty=False)
    texts = check_field(answers, "text", f"{where}, field 'answers'", kind=list, nonempty=False)
    starts = check_field(answers, "answer_start", f"{where}, field 'answers'", kind=list, nonempty=False)
    if len(texts) != len(starts):
        raise CourseError(f"{where}: field 'answers' has {len(texts)} text(s) but {len(starts)} answer_start(s); "
                          "each answer needs its start offset")
    for i, (text, start) in enumerate(zip(texts, starts, strict=True)):
        if not isinstance(text, str) or isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise CourseError(f"{where}: answers.text[{i}]={text!r} and answers.answer_start[{i}]={start!r} must be a "
                              "string and a character offset (an integer >= 0)")


def _count_official_questions(squad: dict, path: Path) -> int:
    """The questions of an official SQuAD JSON, every article, paragraph, question and answer checked."""
    fix = 'the official SQuAD layout is {"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}'
    questions = 0
    for a, article in enumerate(check_field(squad, "data", str(path), kind=list, nonempty=False, fix=fix)):
        at = f"{path}: data[{a}]"
        check_field(article, "title", at, nonempty=False)
        for p, paragraph in enumerate(check_field(article, "paragraphs", at, kind=list, nonempty=False, fix=fix)):
            pt = f"{at}.paragraphs[{p}]"
            check_field(paragraph, "context", pt, nonempty=False)
            for q, qa in enumerate(check_field(paragraph, "qas", pt, kind=list, nonempty=False, fix=fix)):
                qt = f"{pt}.qas[{q}]" + (f" (id {qa['id']!r})" if isinstance(qa, dict) and "id" in qa else "")
                check_field(qa, "id", qt)
                check_field(qa, "question", qt, nonempty=False)
                impossible = check_field(qa, "is_impossible", qt, kind=bool) if "is_impossible" in qa else False
                for k, answer in enumerate(check_field(qa, "answers", qt, kind=list, nonempty=False)):
                    if not impossible:
                        check_field(answer, "text", f"{qt}.answers[{k}]", nonempty=False)
                        if check_field(answer, "answer_start", f"{qt}.answers[{k}]", kind=int) < 0:
                            raise CourseError(f"{qt}.answers[{k}]: field 'answer_start' is negative; it is a character "
                                              "offset into the context")
                questions += 1
    return questions


def read_squad_file(path: str | os.PathLike):
    """A local SQuAD file, checked: the official layout ({"data": [...]}, as it is) or flat records (a list)."""
    path = Path(path)
    squad = read_json(path)
    if isinstance(squad, dict):
        questions = _count_official_questions(squad, path)
    elif isinstance(squad, list):
        for i, record in enumerate(squad):
            rid = f" (id {record['id']!r})" if isinstance(record, dict) and "id" in record else ""
            check_squad_fields(record, f"{path}, record {i}{rid}")
        questions = len(squad)
    else:
        raise CourseError(f"{path}: a JSON {type(squad).__name__}; expected the official SQuAD layout "
                          '{"data": [...]} or a list of flat records [{"id", "context", "question", "answers"}, ...]')
    if not questions:
        raise CourseError(f"{path} holds no questions: nothing to train or evaluate on")
    return squad


def check_max_length(tokenizer, max_length) -> None:
    """At least one token, and no more than the model has position embeddings for."""
    check_int("max_length", max_length, minimum=1, maximum=getattr(tokenizer, "model_max_length", None),
              hint="the model has no position embeddings past its context (tokenizer.model_max_length)")


def check_pad_token_id(pad_token_id) -> None:
    check_int("pad_token_id", pad_token_id, minimum=0, hint="GPT-J has no pad token: set tokenizer.pad_token = "
              "tokenizer.eos_token (padding is masked out of attention and loss)")


def check_record(record: dict) -> None:
    """CourseError naming the record for a bad field, or an answer_start that does not point at its answer's text."""
    rid = record.get("id", "?") if isinstance(record, dict) else "?"
    check_squad_fields(record, f"record {rid}", nonempty=True)
    answers = record["answers"]
    for i, (text, start) in enumerate(zip(answers["text"], answers["answer_start"], strict=True)):
        if (found := record["context"][start:start + len(text)]) != text:
            raise CourseError(f"record {rid}: answers.answer_start[{i}]={start} does not point at answers.text[{i}]="
                              f"{text!r} (the context there reads {found!r}); fix the offset or drop the record")


def check_fits(record: dict, room: int, max_length: int, offsets=(), answer_span: tuple[int, int] | None = None) -> None:
    """CourseError naming the record when its prompt, or its answer's context tokens, cannot fit in `room` tokens."""
    if room < 1:
        raise CourseError(f"record {record['id']}: instruction, question and answer alone take {max_length - room} "
                          f"tokens, more than max_length={max_length}; shorten the question or raise max_length")
    needed = sum(1 for begin, end in offsets if answer_span and end > answer_span[0] and begin < answer_span[1])
    if needed > room:
        raise CourseError(f"record {record['id']}: the answer alone needs {needed} context tokens but only {room} "
                          f"fit in max_length={max_length}; raise max_length")


def skip_bad_records(records: list, encode: Callable, max_skip_fraction: float = 0.01) -> tuple[list, list[str]]:
    """`encode` of every record, skipping one that raises a CourseError (its message kept). One broken record among
    130,000 should not stop a run of hours; more than `max_skip_fraction` of them means the data is wrong: that fails."""
    check_fraction("max_skip_fraction", max_skip_fraction)
    if not records:
        raise CourseError("encode_records: no records to encode; check the data source and the slice sizes")
    encoded, skipped = [], []
    for record in records:
        try:
            encoded.append(encode(record))
        except CourseError as exc:
            skipped.append(str(exc))
    if len(skipped) > max_skip_fraction * len(records):
        raise CourseError(f"{len(skipped)} of {len(records)} records are unusable (more than {max_skip_fraction:.0%}), "
                          f"first: {skipped[0]}")
    return encoded, skipped


def check_gold_answers(gold_answers) -> None:
    if isinstance(gold_answers, str) or not all(isinstance(a, str) for a in gold_answers):
        raise CourseError(f"gold answers must be a list of strings (record['answers']['text']), got {gold_answers!r}")


def check_predictions(predictions: dict, records: list[dict]) -> None:
    """A prediction (a string, "" for no answer) for every record, and at least one record."""
    if not records:
        raise CourseError("squad_v2_scores: no records to score")
    if wrong := [(k, v) for k, v in predictions.items() if not isinstance(v, str)]:
        raise CourseError(f"prediction for record {wrong[0][0]!r} is {wrong[0][1]!r}; each prediction is the answer "
                          "text, \"\" for no answer")
    if missing := [r["id"] for r in records if r["id"] not in predictions]:
        raise CourseError(f"no prediction for {len(missing)} record(s), first: {missing[0]}")


def check_load_args(source, split, n, seed) -> None:
    """load_squad's arguments: a dataset id or a file path, a split name, the slice."""
    if not isinstance(source, str | os.PathLike) or not str(source).strip():
        raise bad_argument("source", source, "a Hub dataset id such as 'rajpurkar/squad_v2' or a path to a SQuAD file")
    if not isinstance(split, str) or not split.strip():
        raise bad_argument("split", split, "a split name such as 'train' or 'validation'")
    check_int("n", n, minimum=1, optional=True, hint="None keeps every record")
    check_int("seed", seed, minimum=0)


def check_encode_args(record, tokenizer, max_length, with_answer) -> None:
    """encode_example's arguments, and the record itself (check_record)."""
    check_max_length(tokenizer, max_length)
    check_flag("with_answer", with_answer)
    check_record(record)


def check_records_args(records, tokenizer, max_length, with_answer) -> None:
    """encode_records' arguments: a list of records (not a string, not one record; skip_bad_records refuses an empty
    one), the sizes."""
    if not isinstance(records, list | tuple):
        raise bad_argument("records", records, "a list of SQuAD records (dicts), not one record or a file name",
                           "load them with load_squad")
    check_max_length(tokenizer, max_length)
    check_flag("with_answer", with_answer)


def check_collate_args(batch, pad_token_id) -> None:
    """collate_squad_batch's arguments: a non-empty list of encoded examples, and a pad token id."""
    if isinstance(batch, str | dict) or not isinstance(batch, list | tuple) or not batch:
        raise bad_argument("batch", batch, "a non-empty list of encoded examples (encode_example's dicts)",
                           "an empty batch has no longest example to pad to: check the batch size and the data")
    for i, example in enumerate(batch):
        if not isinstance(example, dict) or not all(
                isinstance(example.get(key), list | tuple) for key in ("input_ids", "labels")):
            raise bad_argument(f"batch[{i}]", example, "an encoded example with lists 'input_ids' and 'labels'",
                               "encode the records with encode_example or encode_records first")
    check_pad_token_id(pad_token_id)


def check_train_args(batches, grad_accum, pad_token_id, amp_dtype) -> None:
    """squad_train_epoch's arguments, before the first step: batches of examples, the accumulation, the precision."""
    import torch

    if isinstance(batches, str | dict) or not isinstance(batches, list | tuple) or not batches:
        raise bad_argument("batches", batches, "a non-empty list of batches (each a list of encoded examples)",
                           "an epoch with no batches trains nothing: check the data and the batch size")
    for i, batch in enumerate(batches):
        if isinstance(batch, str | dict) or not isinstance(batch, list | tuple) or not batch:
            raise bad_argument(f"batches[{i}]", batch, "a non-empty list of encoded examples")
    check_int("grad_accum", grad_accum, minimum=1, hint="an optimizer step every grad_accum batches")
    check_pad_token_id(pad_token_id)
    if amp_dtype not in (None, torch.float16, torch.bfloat16):
        raise bad_argument("amp_dtype", amp_dtype, "torch.float16, torch.bfloat16 or None (no autocast, fp32)")


def check_run_paths(resume, checkpoint: Path, adapter_dir: Path) -> None:
    """The parameters cell's RESUME and where the run writes, checked before the first step: a folder that is an
    existing file would fail only after an epoch of training."""
    if not isinstance(resume, bool):
        raise CourseArgumentError(f"RESUME must be True or False, got {resume!r}; write the bool itself in the "
                                  "parameters cell (papermill: -p RESUME True), not a string or a number")
    for what, folder in (("the checkpoint's folder", checkpoint.parent), ("the adapter folder", adapter_dir)):
        if folder.exists() and not folder.is_dir():
            raise CourseError(f"{folder} ({what}) is an existing file, not a folder: move it away or delete it, "
                              "then run again (nothing has been trained yet)")
    if checkpoint.is_dir():
        raise CourseError(f"{checkpoint} is a folder; the checkpoint is one file: move the folder away or delete it")


def check_saved_adapter(folder: str | os.PathLike) -> None:
    """An adapter folder save_pretrained wrote, checked before a base model is loaded for it: its config and its
    safetensors weights readable (a save or copy that did not finish leaves a truncated file)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CourseError(f"{folder}: no adapter folder there; save the adapter first (model.save_pretrained)")
    read_json(folder / "adapter_config.json")
    load_safetensors(folder / "adapter_model.safetensors")
