"""Chapter 04's instruction data files: the named data sets (downloaded once, cached), reading a local JSON or JSON
Lines file, and the check of every record (a CourseError naming the file, the record and the field; a warning with
the count of duplicates). Plumbing: the notebook names these and imports them.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from utils.checks import check_field, read_json
from utils.errors import CourseError

#: The data sets the chapter can train on (same schema: a JSON list of {instruction, input, output}).
DATA_SOURCES = {
    # 1,100 entries, the source material's data (about 200 kB)
    "instruction-data": "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/01_main-chapter-code/instruction-data.json",
    # 52,002 entries (about 22 MB): Stanford Alpaca; needs a smaller batch and allowed_max_length (see the README)
    "alpaca-52k": "https://raw.githubusercontent.com/tatsu-lab/stanford_alpaca/main/alpaca_data.json",
}
FIELDS = ("instruction", "input", "output")


def validate_instruction_data(data, source: str = "the data") -> list[dict]:
    """Check a non-empty list of {instruction, input, output} records; raise CourseError naming the source, the
    record index and the field for a record that is not an object, a missing key, a non-string value, or an empty
    instruction or output; warn with the count of duplicates."""
    if not isinstance(data, list):
        keys = f" with keys {sorted(data)[:5]}" if isinstance(data, dict) else ""
        raise CourseError(f"{source}: expected a JSON list of records [{{\"instruction\": ..., \"input\": ..., "
                          f"\"output\": ...}}, ...], got a {type(data).__name__}{keys}; put the records in a list")
    if not data:
        raise CourseError(f"{source} holds no records (an empty list): there is nothing to train on; "
                          "pass a file with {instruction, input, output} records")
    seen, duplicates = set(), 0
    for i, record in enumerate(data):
        where = f"{source}, record {i}"
        for field in FIELDS:  # "" is a fine input (no input); instruction and output must say something
            check_field(record, field, where, nonempty=field != "input",
                        fix=f"every record needs {FIELDS} (use \"\" for an empty input)")
        key = tuple(record[field] for field in FIELDS)
        duplicates += key in seen
        seen.add(key)
    if duplicates:
        warnings.warn(f"{source}: {duplicates} duplicate record(s) (same instruction, input and output); "
                      "they are kept, but they weigh twice in training and can leak between splits", stacklevel=2)
    return data


def load_instruction_data(path_or_name: str | os.PathLike) -> list[dict]:
    """The validated records of a local UTF-8 JSON (or JSON Lines) file, or of one of `DATA_SOURCES` by name
    (downloaded once, cached). Bad encoding, syntax, structure or records are a CourseError naming the file, the
    record and the field."""
    if str(path_or_name) in DATA_SOURCES:
        from utils.download import download

        path = download(DATA_SOURCES[str(path_or_name)], f"{path_or_name}.json")
    else:
        path = Path(path_or_name)
        if not path.exists():
            raise CourseError(f"{path}: no such file; pass the path of a JSON file of {{instruction, input, output}} "
                              f"records, or one of the named data sets: {', '.join(DATA_SOURCES)}")
    return validate_instruction_data(read_json(path), source=str(path))
