"""Checks of what a learner hands the course, each failing at once with a message that says what to do: arguments
(`check_int`, `check_number`, `check_fraction`, `check_choice`, `check_names`, `check_flag`, `check_folder`, and
`bad_argument` for the rest: a CourseArgumentError naming the function and the argument) and files (`read_text`,
`read_json`, `read_records`, `check_field`, `load_safetensors`, `check_tensors`: a CourseError naming the file, the
line or record, and the field)."""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import operator
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from utils.errors import CourseArgumentError, CourseError


def _caller() -> str:
    """The course function whose argument is being checked (the first frame outside this module)."""
    frame = sys._getframe(1)
    while frame is not None and (frame.f_globals.get("__name__") == __name__ or frame.f_code.co_name.startswith("check_")):
        frame = frame.f_back  # past this module and the course's own check_* helpers, to the function checked
    return getattr(frame.f_code, "co_qualname", frame.f_code.co_name) if frame else "?"


def bad_argument(name: str, value, expected: str, hint: str = "") -> CourseArgumentError:
    """The error "<function>(): <name> must be <expected>, got <value>; <hint>", naming the course function called."""
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."  # a whole batch would drown it
    return CourseArgumentError(f"{_caller()}(): {name} must be {expected}, got {shown}" + (f"; {hint}" if hint else ""))


_BOUNDS = (("above", ">", operator.gt), ("minimum", ">=", operator.ge), ("maximum", "<=", operator.le),
           ("below", "<", operator.lt))


def _check_range(name: str, value, kind: str, valid: bool, optional: bool, hint: str, **bounds):
    """`value` if it is `valid` and within `bounds` (minimum, maximum, above, below), or None when `optional`."""
    if value is None and optional:
        return value
    limits = [(op, test, bounds[key]) for key, op, test in _BOUNDS if bounds.get(key) is not None]
    if not valid or not all(test(value, limit) for _, test, limit in limits):
        expected = " ".join([kind, " and ".join(f"{op} {limit}" for op, _, limit in limits)]).strip()
        raise bad_argument(name, value, expected + (" (or None)" if optional else ""), hint)
    return value


def check_int(name: str, value, *, minimum: int | None = None, maximum: int | None = None, optional: bool = False,
              hint: str = ""):
    """`value` unchanged if it is an integer (not a bool) within [minimum, maximum], or None when `optional`."""
    valid = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    return _check_range(name, value, "an integer", valid, optional, hint, minimum=minimum, maximum=maximum)


def check_number(name: str, value, *, minimum: float | None = None, maximum: float | None = None,
                 above: float | None = None, below: float | None = None, optional: bool = False, hint: str = ""):
    """`value` unchanged if it is a finite real number (not a bool) within the bounds given, or None when `optional`."""
    valid = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    return _check_range(name, value, "a finite number", valid, optional, hint, minimum=minimum, maximum=maximum,
                        above=above, below=below)


def check_fraction(name: str, value, hint: str = ""):
    """`value` unchanged if it is a finite number between 0 and 1."""
    return check_number(name, value, minimum=0, maximum=1, hint=hint)


def check_choice(name: str, value, choices: Sequence, hint: str = ""):
    """`value` unchanged if it is one of `choices` (bools are not the numbers 0 and 1 here)."""
    if isinstance(value, bool) or value not in choices:
        raise bad_argument(name, value, "one of " + ", ".join(map(repr, choices)), hint)
    return value


def check_flag(name: str, value, hint: str = "") -> bool:
    """`value` if it is True or False: the string "False" (from a config file or a command line) is refused, not
    taken as true."""
    if not isinstance(value, bool):
        fix = "write the bool itself, not a string" if isinstance(value, str) else ""
        raise bad_argument(name, value, "True or False", hint or fix)
    return value


def check_folder(name: str, value, *, exists: bool = False, hint: str = "") -> Path:
    """`value` as a Path to a folder: never an existing file; with `exists`, a folder that is there. Checked where the
    path is taken, before any work that would be lost when writing into it fails."""
    if not isinstance(value, str | os.PathLike) or not str(value).strip():
        raise bad_argument(name, value, "a folder path", hint)
    path = Path(value)
    there = next((p for p in (path, *path.parents) if p.exists()), path)  # it, or the part of it that exists
    if there.exists() and not there.is_dir():
        expected = "a folder, not an existing file" if there == path else f"a folder path, but {there} is a file"
        raise bad_argument(name, value, expected, hint or "pass a folder path, or move the file away")
    if exists and not path.is_dir():
        raise bad_argument(name, value, "an existing folder", hint or f"create it first (mkdir -p {path})")
    return path


def check_names(name: str, value, hint: str = "") -> list[str]:
    """`value` as a list if it is a non-empty collection of non-empty strings (not a bare string: its letters)."""
    if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset) or not value or not all(
            isinstance(v, str) and v for v in value):
        raise bad_argument(name, value, "a non-empty list of names such as [\"q_proj\", \"v_proj\"]", hint)
    return list(value)


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 file's text; CourseError for a missing file, a folder, bytes not UTF-8 (naming the line), no text."""
    path = Path(path)
    if path.is_dir():
        raise CourseError(f"{path} is a folder, not a file: pass the path of the file itself")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CourseError(f"{path}: no such file; check the path (relative paths start at {Path.cwd()})") from None
    except OSError as exc:
        raise CourseError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise CourseError(f"{path}, line {line}: byte {exc.start} ({data[exc.start:exc.start + 1]!r}) is not UTF-8 "
                          f"({exc.reason}); the course reads UTF-8 text: save the file as UTF-8 (for a Latin-1 file: "
                          f"iconv -f latin1 -t utf-8 {path.name} > fixed-{path.name})") from None
    if not text.strip():
        raise CourseError(f"{path} is empty: it holds no text, so there is nothing to read; fill it or pass another file")
    return text


def _json_lines(text: str, path: Path) -> list[tuple[int, object]]:
    """(line number, value) of each non-blank line of a JSON Lines text."""
    values = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise CourseError(f"{path}, line {number}: not valid JSON ({exc.msg} at column {exc.colno}); JSON Lines "
                              "hold one complete object per line: fix or delete that line") from None
    return values


def read_json(path: str | os.PathLike):
    """A UTF-8 JSON file's content, or a JSON Lines file's values; CourseError naming a syntax error's line, column."""
    path = Path(path)
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # more than one value: JSON Lines, if every line is one
            try:
                return [value for _, value in _json_lines(text, path)]
            except CourseError:
                pass
        raise CourseError(f"{path}, line {exc.lineno} column {exc.colno}: not valid JSON ({exc.msg}); fix the file "
                          "there (a JSON checker such as `python -m json.tool` shows the spot)") from None


class Record(NamedTuple):
    """One record of a data file and where it came from, for messages: "line 4" (CSV, JSON Lines) or "record 3"."""

    place: str
    fields: dict


def _csv_records(text: str, path: Path) -> list[Record]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    records, header, start = [], None, 1
    try:
        for row in reader:
            line, start = start, reader.line_num + 1  # a quoted field may span lines: name the record's first
            if not row or not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = [cell.strip() for cell in row]
                if "" in header or len(set(header)) < len(header):
                    raise CourseError(f"{path}, line {line}: the header row {header} has an empty or repeated column "
                                      "name; give every column a distinct name")
                continue
            if len(row) != len(header):
                raise CourseError(f"{path}, line {line}: {len(row)} field{'s' * (len(row) != 1)} where the header has {len(header)} "
                                  f"({', '.join(header)}); a comma inside a field needs double quotes around the "
                                  "field (\"like, this\"), and a field that holds a quote doubles it (\"\")")
            records.append(Record(f"line {line}", dict(zip(header, row, strict=True))))
    except csv.Error as exc:
        raise CourseError(f"{path}, line {reader.line_num}: not valid CSV ({exc}); check the quotes on that line") from None
    if not records:
        raise CourseError(f"{path} has {'a header but ' if header else ''}no records: nothing to read")
    return records


def read_records(path: str | os.PathLike) -> list[Record]:
    """The records of a UTF-8 .csv (a header row, a record per row), .json (a list of objects) or .jsonl file,
    checked: CourseError naming the line or record."""
    path = Path(path)
    if path.suffix not in (".csv", ".json", ".jsonl"):
        raise CourseError(f"{path}: the course reads records from .csv, .json and .jsonl files; rename or convert it")
    text = read_text(path)
    if path.suffix == ".csv":
        return _csv_records(text, path)
    if path.suffix == ".jsonl":
        numbered = [(f"line {n}", value) for n, value in _json_lines(text, path)]
    else:
        data = read_json(path)
        if not isinstance(data, list):
            keys = f" with keys {sorted(data)[:5]}" if isinstance(data, dict) else ""
            raise CourseError(f"{path}: expected a JSON list of records [{{...}}, {{...}}], got a "
                              f"{type(data).__name__}{keys}; put the records in a list")
        numbered = [(f"record {i}", value) for i, value in enumerate(data)]
    for place, value in numbered:
        if not isinstance(value, dict):
            raise CourseError(f"{path}, {place}: a JSON {type(value).__name__}, expected an object {{\"field\": ...}} "
                              "per record")
    if not numbered:
        raise CourseError(f"{path} has no records: nothing to read")
    return [Record(place, value) for place, value in numbered]


_KINDS = {str: "text (a string)", int: "an integer", bool: "true or false", list: "a list", dict: "an object"}


def check_field(fields: dict, name: str, where: str, kind: type = str, *, nonempty: bool = True, fix: str = ""):
    """fields[name] if present, of type `kind` (a bool is not an int) and, when `nonempty`, not blank; else a
    CourseError "<where>: field <name> ..." (`fix`: the advice for a missing field)."""
    if not isinstance(fields, dict):
        raise CourseError(f"{where}: a {type(fields).__name__}, expected an object with a field {name!r}")
    if name not in fields:
        raise CourseError(f"{where}: no field {name!r} (its fields: {sorted(fields)}); "
                          + (fix or f"every record needs {name!r}"))
    value = fields[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        shown = repr(value) if len(repr(value)) < 40 else repr(value)[:37] + "..."
        expected = _KINDS.get(kind) or ("a number" if kind == float | int else getattr(kind, "__name__", str(kind)))
        raise CourseError(f"{where}: field {name!r} is {type(value).__name__} {shown}, expected {expected}; fix the "
                          "record or remove it")
    if nonempty and isinstance(value, str | list | dict) and not (value.strip() if isinstance(value, str) else value):
        raise CourseError(f"{where}: field {name!r} is empty; fill it in or remove the record")
    return value


def load_safetensors(path: str | os.PathLike) -> dict:
    """The tensors of a safetensors file; CourseError naming the file when it is missing, truncated or not one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CourseError(f"{path}: no such file; the checkpoint is incomplete: save or download it again")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CourseError(f"{path} is not a readable safetensors file ({exc}); an interrupted download or save "
                          "leaves such files: delete it and save or download it again") from None


def check_tensors(tensors: dict, expected: dict, source: str) -> None:
    """CourseError naming `source` unless `tensors` has exactly the names and shapes of `expected` (a state_dict())."""
    missing = sorted(expected.keys() - tensors.keys())
    unexpected = sorted(tensors.keys() - expected.keys())
    if missing or unexpected:
        raise CourseError(f"{source} does not fit this model: {len(missing)} tensor(s) missing (first: {missing[:3]}), "
                          f"{len(unexpected)} unexpected (first: {unexpected[:3]}); was it saved from another model? "
                          "Load it into the model it was saved from")
    shapes = [(k, tuple(tensors[k].shape), tuple(expected[k].shape)) for k in expected
              if tuple(tensors[k].shape) != tuple(expected[k].shape)]
    if shapes:
        name, got, want = shapes[0]
        raise CourseError(f"{source} does not fit this model: {len(shapes)} tensor(s) of another shape, first {name} "
                          f"{got} where the model has {want}; was it saved with another configuration (emb_dim, "
                          "n_layers, vocab_size)?")


def check_target_modules(model, target_modules):
    """Raise a CourseError naming any of `target_modules` that `model` has no module for (before get_peft_model)."""
    import torch

    target_modules = check_names("target_modules", target_modules, hint="pass a list such as ['query_key_value']")
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in target_modules if t not in names]
    if missing:
        linears = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                          if isinstance(m, torch.nn.Linear)})  # bitsandbytes' Linear4bit and Linear8bitLt are Linears
        raise CourseError(f"target_modules {missing} not found in {type(model).__name__}; "
                          f"its linear layers are: {linears}")
