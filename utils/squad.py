"""SQuAD v2 for chapter 02: flat records, the instruction prompt, tokenization with the loss on the answer only,
padding to the longest in a batch, and the official SQuAD v2 metric (exact match and F1, HasAns / NoAns).

Chapter 02's notebook writes the data and training functions out (a test proves the two copies identical); the
metric is plumbing that the notebook imports, tested on hand-worked cases in tests/test_ch02_squad_metric.py.
"""

from __future__ import annotations

import collections
import os
import re
import string
from pathlib import Path

from utils.checks import check_field, check_fraction, check_int, read_json
from utils.errors import CourseError
from utils.hub import hub_errors

INSTRUCTION = "Read the context and question to find the correct answer."
NO_ANSWER = "answers not in context"


# ---------------------------------------------------------------- data: records, prompt, tokens, batches


def check_squad_fields(record, where: str) -> None:
    """CourseError naming `where` and the field unless `record` is a flat SQuAD record with every field of its type:
    id, title, context, question (strings) and answers {text: [str], answer_start: [int >= 0]} of equal lengths."""
    for name in ("id", "title", "context", "question"):
        check_field(record, name, where, nonempty=name == "id")
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


def _check_official_layout(squad: dict, path: Path) -> int:
    """The number of questions of an official SQuAD JSON, every article, paragraph, question and answer checked."""
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
    """A local SQuAD file, read and checked: the official JSON layout ({"data": [...]}, returned as it is) or the
    Hub's flat records (a JSON list or JSON Lines of {id, title, context, question, answers}, returned as a list).
    Bad encoding, syntax or structure, a missing or mistyped field, or no question at all is a CourseError naming
    the file, the record and the field."""
    path = Path(path)
    squad = read_json(path)
    if isinstance(squad, dict):
        questions = _check_official_layout(squad, path)
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


def flatten_squad(squad: dict) -> list[dict]:
    """Official SQuAD v2 JSON ({"data": [article {"title", "paragraphs": [...]}]}) -> one flat record per question,
    in the schema of the Hub's rajpurkar/squad_v2: id, title, context, question, answers {text, answer_start}.
    Every paragraph of every article is read (the source material read only `paragraphs[0]`)."""
    records = []
    for article in squad["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                answers = [] if qa.get("is_impossible", False) else qa["answers"]
                records.append({
                    "id": qa["id"],
                    "title": article["title"],
                    "context": paragraph["context"],
                    "question": qa["question"],
                    "answers": {"text": [a["text"] for a in answers],
                                "answer_start": [a["answer_start"] for a in answers]},
                })
    return records


def load_squad(source: str | os.PathLike, split: str, n: int | None = None, seed: int = 0) -> list[dict]:
    """`n` shuffled records of one split: from the Hub (`source` a dataset id such as "rajpurkar/squad_v2") or from
    a local file (`source` a path; `split` is then only a label) in the official JSON layout or as the Hub's flat
    records. A bad file is a CourseError naming the record and the field."""
    from datasets import Dataset, load_dataset

    check_int("n", n, minimum=1, optional=True)
    check_int("seed", seed, minimum=0)
    if Path(source).suffix in {".json", ".jsonl"} or Path(source).exists():
        squad = read_squad_file(source)  # checked: UTF-8, either layout, every field there with its type
        dataset = Dataset.from_list(flatten_squad(squad) if isinstance(squad, dict) else squad)
    else:
        with hub_errors(source, kind="dataset"):
            dataset = load_dataset(str(source), split=split)
    dataset = dataset.shuffle(seed=seed)
    if n is not None:
        dataset = dataset.select(range(min(n, len(dataset))))
    return dataset.to_list()


def prompt_parts(record: dict) -> tuple[str, str, str]:
    """The prompt as (head, context, tail); head + context + tail ends with "answer:". Kept apart so that a
    prompt too long for the model can lose context tokens, never the instruction or the question."""
    head = f"{INSTRUCTION}\ncontext:\n"
    tail = f"\nquestion: {record['question']}\nanswer:"
    return head, record["context"], tail


def target_text(record: dict) -> str:
    """What the model learns to write after "answer:": the first gold answer, or NO_ANSWER when there is none."""
    texts = record["answers"]["text"]
    return " " + (texts[0] if texts else NO_ANSWER)


def check_record(record: dict) -> None:
    """Raise CourseError, naming the record, for a missing or mistyped field, an empty context or question, or an
    answer_start that does not point at its text."""
    rid = record.get("id", "?") if isinstance(record, dict) else "?"
    check_squad_fields(record, f"record {rid}")  # every field there, with its type
    if not record["context"].strip():
        raise CourseError(f"record {rid}: field 'context' is empty; there is nothing to read the answer from")
    if not record["question"].strip():
        raise CourseError(f"record {rid}: field 'question' is empty")
    answers = record["answers"]
    for i, (text, start) in enumerate(zip(answers["text"], answers["answer_start"], strict=True)):
        found = record["context"][start:start + len(text)]
        if found != text:
            raise CourseError(f"record {rid}: answers.answer_start[{i}]={start} does not point at answers.text[{i}]="
                              f"{text!r} (the context there reads {found!r}); fix the offset or drop the record")


def context_window(offsets: list[tuple[int, int]], room: int, answer_span: tuple[int, int] | None) -> int:
    """The first context token to keep when only `room` of the context's tokens fit: 0 (cut from the end) when there
    is no answer to keep, else the start of a window of `room` tokens centred on the answer's characters."""
    if len(offsets) <= room or answer_span is None:
        return 0
    a0, a1 = answer_span
    first = next(i for i, (_, end) in enumerate(offsets) if end > a0)
    last = max(i for i, (begin, _) in enumerate(offsets) if begin < a1)
    if last - first + 1 > room:
        raise CourseError(f"the answer alone needs {last - first + 1} context tokens but only {room} fit")
    return min(max(0, (first + last + 1 - room) // 2), len(offsets) - room)


def encode_example(record: dict, tokenizer, max_length: int, with_answer: bool = True) -> dict:
    """Token ids of one prompt (and, with_answer, its answer + end-of-text) in at most `max_length` tokens.

    labels are -100 on the prompt (no loss there) and the token ids on the answer and end-of-text. When the prompt
    is too long only the context is cut: around the answer when training on one, else from the end."""
    check_int("max_length", max_length, minimum=1, maximum=getattr(tokenizer, "model_max_length", None),
              hint="the model has no position embeddings past its context (tokenizer.model_max_length)")
    check_record(record)
    head, context, tail = prompt_parts(record)
    head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    tail_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    answer_ids = []
    if with_answer:
        answer_ids = tokenizer(target_text(record), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    encoded = tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)
    room = max_length - len(head_ids) - len(tail_ids) - len(answer_ids)
    if room < 1:
        raise CourseError(f"record {record['id']}: instruction, question and answer alone take {max_length - room} "
                          f"tokens, more than max_length={max_length}; shorten the question or raise max_length")
    answers = record["answers"]
    span = (answers["answer_start"][0], answers["answer_start"][0] + len(answers["text"][0])) if answer_ids and answers["text"] else None
    try:
        start = context_window(encoded["offset_mapping"], room, span)
    except CourseError as exc:
        raise CourseError(f"record {record['id']}: {exc} in max_length={max_length}; raise max_length") from None
    kept = encoded["input_ids"][start:start + room]
    input_ids = head_ids + kept + tail_ids + answer_ids
    labels = [-100] * (len(input_ids) - len(answer_ids)) + answer_ids
    return {"id": record["id"], "input_ids": input_ids, "labels": labels,
            "context_tokens_cut": len(encoded["input_ids"]) - len(kept)}


def encode_records(records: list[dict], tokenizer, max_length: int, with_answer: bool = True,
                   max_skip_fraction: float = 0.01) -> tuple[list[dict], list[str]]:
    """Encode every record; a bad one is skipped and its message (naming the record) kept, so the caller can print
    the count. More than `max_skip_fraction` bad records means the data, not a record, is wrong: that fails."""
    check_int("max_length", max_length, minimum=1, maximum=getattr(tokenizer, "model_max_length", None),
              hint="the model has no position embeddings past its context (tokenizer.model_max_length)")
    check_fraction("max_skip_fraction", max_skip_fraction)
    if not records:
        raise CourseError("encode_records: no records to encode; check the data source and the slice sizes")
    encoded, skipped = [], []
    for record in records:
        try:
            encoded.append(encode_example(record, tokenizer, max_length, with_answer))
        except CourseError as exc:
            skipped.append(str(exc))
    if len(skipped) > max_skip_fraction * len(records):
        raise CourseError(f"{len(skipped)} of {len(records)} records are unusable (more than {max_skip_fraction:.0%}), "
                          f"first: {skipped[0]}")
    return encoded, skipped


def collate_squad_batch(batch: list[dict], pad_token_id: int) -> dict:
    """Pad a batch to its longest example (right padding): pad ids in input_ids, 0 in attention_mask, -100 in labels."""
    import torch

    check_int("pad_token_id", pad_token_id, minimum=0, hint="GPT-J has no pad token: set tokenizer.pad_token = "
              "tokenizer.eos_token (padding is masked out of attention and loss)")

    longest = max(len(example["input_ids"]) for example in batch)
    input_ids = torch.full((len(batch), longest), pad_token_id, dtype=torch.long)
    labels = torch.full((len(batch), longest), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), longest), dtype=torch.long)
    for row, example in enumerate(batch):
        n = len(example["input_ids"])
        input_ids[row, :n] = torch.tensor(example["input_ids"])
        labels[row, :n] = torch.tensor(example["labels"])
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


# ---------------------------------------------------------------- training: mixed precision, a checkpoint every epoch


def squad_train_epoch(model, batches, optimizer, scaler, grad_accum: int, pad_token_id: int, amp_dtype=None,
                      desc: str = "epoch") -> list[float]:
    """One epoch of LoRA training; returns the loss of each optimizer step.

    The forward runs under autocast in `amp_dtype` (fp16 on a T4, bf16 on newer GPUs; None: no autocast, fp32 on a
    CPU), so the matmuls and bitsandbytes' backward run in 16 bits while the LoRA weights, their gradients and
    AdamW's state stay fp32. `scaler` (a `torch.amp.GradScaler`, enabled for fp16) multiplies the loss before
    backward so that small fp16 gradients do not flush to zero, unscales them before the step, and skips a step
    whose gradients overflowed. The loss is divided by the batches in each optimizer step (gradient accumulation).
    """
    import torch
    from tqdm.auto import tqdm

    model.train()
    device = model.device
    losses = []
    for i, examples in enumerate(tqdm(batches, desc=desc)):
        group = min(grad_accum, len(batches) - i // grad_accum * grad_accum)  # batches in this optimizer step
        batch = {n: t.to(device) for n, t in collate_squad_batch(examples, pad_token_id).items()}
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss = model(**batch).loss / group
        scaler.scale(loss).backward()
        if i % grad_accum == 0:
            losses.append(0.0)
        losses[-1] += loss.item()
        if (i + 1) % grad_accum == 0 or i + 1 == len(batches):
            scaler.step(optimizer)  # unscale, then step (skipped if an fp16 gradient is inf or nan)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
    return losses


def save_training_state(folder: str | os.PathLike, model, optimizer, scaler, state: dict, best_adapter: dict) -> Path:
    """Save what resuming needs into `folder`: the adapter and the best adapter so far (safetensors), the optimizer
    and GradScaler state (tensors-only torch files, read back with weights_only=True) and the loop's counters and
    history (JSON). Written into a temporary folder and renamed, so a crash never leaves a half-written epoch."""
    import json
    import shutil

    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    adapter = get_peft_model_state_dict(model)
    save_file({k: v.detach().contiguous().cpu() for k, v in adapter.items()}, str(tmp / "adapter.safetensors"))
    save_file({k: v.detach().contiguous().cpu() for k, v in best_adapter.items()}, str(tmp / "best_adapter.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scaler.state_dict(), tmp / "scaler.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def load_training_state(folder: str | os.PathLike, model, optimizer, scaler) -> tuple[dict, dict]:
    """Restore the adapter, optimizer and GradScaler saved by `save_training_state`; return (state, best adapter)."""
    import json

    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / "state.json").is_file():
        raise CourseError(f"{folder} holds no saved epoch (no state.json): nothing to resume from")
    set_peft_model_state_dict(model, load_file(str(folder / "adapter.safetensors"), device=str(model.device)))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True, map_location=model.device))
    scaler.load_state_dict(torch.load(folder / "scaler.pt", weights_only=True))
    best = load_file(str(folder / "best_adapter.safetensors"))
    return json.loads((folder / "state.json").read_text(encoding="utf-8")), best


# ---------------------------------------------------------------- the official SQuAD v2 metric


def normalize_answer(text: str) -> str:
    """The official SQuAD normalisation: lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _gold_list(gold_answers: list[str]) -> list[str]:
    """The official script's gold list: answers that normalise to nothing are dropped; none left means "no answer" ("")."""
    if isinstance(gold_answers, str) or not all(isinstance(a, str) for a in gold_answers):
        raise CourseError(f"gold answers must be a list of strings (record['answers']['text']), got {gold_answers!r}")
    return [a for a in gold_answers if normalize_answer(a)] or [""]


def _f1_one(prediction: str, gold: str) -> float:
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)  # "no answer" is right only when both are empty
    common = sum((collections.Counter(pred_tokens) & collections.Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, gold_answers: list[str]) -> float:
    """1.0 when the normalised prediction equals one normalised gold answer ("" against an empty gold list), else 0.0."""
    return max(float(normalize_answer(prediction) == normalize_answer(gold)) for gold in _gold_list(gold_answers))


def f1_score(prediction: str, gold_answers: list[str]) -> float:
    """Token-overlap F1 of the normalised prediction, the best over the gold answers."""
    return max(_f1_one(prediction, gold) for gold in _gold_list(gold_answers))


def answer_from_generation(text: str) -> str:
    """A generated continuation -> a SQuAD v2 prediction: its first line, and "" for the no-answer phrase."""
    lines = text.strip().splitlines()
    answer = lines[0].strip() if lines else ""
    return "" if normalize_answer(answer) == normalize_answer(NO_ANSWER) else answer


def squad_v2_scores(predictions: dict[str, str], records: list[dict]) -> dict[str, dict[str, float]]:
    """Exact match and F1 in percent, overall and split into questions with an answer (HasAns) and without (NoAns).
    `predictions` maps record id -> answer text ("" for no answer); a record without a prediction is an error."""
    if not records:
        raise CourseError("squad_v2_scores: no records to score")
    wrong = [(k, v) for k, v in predictions.items() if not isinstance(v, str)]
    if wrong:
        raise CourseError(f"prediction for record {wrong[0][0]!r} is {wrong[0][1]!r}; each prediction is the answer "
                          "text, \"\" for no answer")
    missing = [r["id"] for r in records if r["id"] not in predictions]
    if missing:
        raise CourseError(f"no prediction for {len(missing)} record(s), first: {missing[0]}")
    groups: dict[str, list[tuple[float, float]]] = {"overall": [], "HasAns": [], "NoAns": []}
    for record in records:
        gold = record["answers"]["text"]
        pair = (exact_match(predictions[record["id"]], gold), f1_score(predictions[record["id"]], gold))
        groups["overall"].append(pair)
        groups["HasAns" if _gold_list(gold) != [""] else "NoAns"].append(pair)
    return {
        name: {"exact": 100 * sum(e for e, _ in pairs) / len(pairs) if pairs else float("nan"),
               "f1": 100 * sum(f for _, f in pairs) / len(pairs) if pairs else float("nan"),
               "total": len(pairs)}
        for name, pairs in groups.items()
    }
