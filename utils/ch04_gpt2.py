"""Chapter 04's plumbing around the GPT-2 its notebook writes out (utils/lessons/gpt.py): the Hub's checkpoints and
tokenizer, the instruction data files, and scoring responses (token F1, ROUGE-L, and an LLM judge through a local
Ollama server, used only when one answers).
"""

from __future__ import annotations

import json
import os
import re
import string
import urllib.error
import urllib.request
import warnings
from collections import Counter
from pathlib import Path

from utils.checks import check_field, check_number, read_json
from utils.errors import CourseError
from utils.hub import download, hub_errors
from utils.lessons.instruction_data import format_input

#: The keys of a GPTModel config (GPT_CONFIG_124M in utils/lessons/gpt.py is one).
GPT_CONFIG_KEYS = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "drop_rate", "qkv_bias")


def check_gpt_config(cfg, source: str = "the GPTModel config"):
    """`cfg` unchanged if GPTModel can be built from it; else a CourseError naming the field and what to do."""
    fix = f"a GPTModel config has the keys {GPT_CONFIG_KEYS} (see GPT_CONFIG_124M)"
    for key in GPT_CONFIG_KEYS[:5]:
        if check_field(cfg, key, source, kind=int, fix=fix) < 1:
            raise CourseError(f"{source}: field {key!r} is {cfg[key]}; it must be at least 1")
    rate = check_field(cfg, "drop_rate", source, kind=float | int, fix=fix)
    if not 0 <= rate < 1:
        raise CourseError(f"{source}: field 'drop_rate' is {rate}; a dropout rate lies in [0, 1)")
    check_field(cfg, "qkv_bias", source, kind=bool, fix=fix)
    if cfg["emb_dim"] % cfg["n_heads"]:
        raise CourseError(f"{source}: emb_dim={cfg['emb_dim']} is not a multiple of n_heads={cfg['n_heads']}; each "
                          "head takes emb_dim / n_heads of the dimensions: change one of them")
    return cfg


def config_from_hf(hf_config: dict, drop_rate: float = 0.0, source: str = "config.json") -> dict:
    """The GPTModel config of a GPT2LMHeadModel checkpoint's config.json (any size, the tiny smoke ones too)."""
    check_number("drop_rate", drop_rate, minimum=0, maximum=0.99, hint="a dropout rate lies in [0, 1)")
    if not isinstance(hf_config, dict):
        raise CourseError(f"{source}: expected a JSON object of the model's settings, got a {type(hf_config).__name__}; "
                          "pass a GPT2LMHeadModel checkpoint folder")
    for key in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
        check_field(hf_config, key, source, kind=int, fix="is this a GPT-2 (GPT2LMHeadModel) checkpoint?")
    if hf_config.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise CourseError(f"{source}: activation {hf_config['activation_function']!r}: GPTModel implements GPT-2's "
                          "tanh GELU only")
    return check_gpt_config({"vocab_size": hf_config["vocab_size"], "context_length": hf_config["n_positions"],
                             "emb_dim": hf_config["n_embd"], "n_heads": hf_config["n_head"],
                             "n_layers": hf_config["n_layer"], "drop_rate": drop_rate, "qkv_bias": True}, source)


def resolve_checkpoint(model_id_or_path: str | os.PathLike) -> Path:
    """A local folder holding config.json and model.safetensors: the path itself, or a Hub snapshot of the id."""
    path = Path(model_id_or_path)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    with hub_errors(model_id_or_path):  # offline, unknown id, no token: a CourseError that says what to do
        # the model's config and safetensors weights only (the Hub repos also hold TF, Flax, ONNX and pickle files)
        return Path(snapshot_download(str(model_id_or_path),
                                      allow_patterns=["config.json", "model*.safetensors", "model.safetensors.index.json"]))


class Tokenizer:
    """The chapter's small tokenizer interface (`encode`, `decode`, `eos_id`) over GPT-2's BPE in full mode
    (<|endoftext|> = 50256) or the tiny checkpoint's in smoke mode; `<|endoftext|>` in a text encodes to `eos_id`."""

    def __init__(self, name_or_path: str | os.PathLike):
        from transformers import AutoTokenizer

        with hub_errors(name_or_path, kind="tokenizer"):
            self.hf = AutoTokenizer.from_pretrained(str(name_or_path))
        if self.hf.eos_token_id is None:
            raise CourseError(f"the tokenizer of {name_or_path!r} has no end-of-text token")
        self.eos_id = self.hf.eos_token_id  # also the padding id: GPT-2 has no pad token
        self.vocab_size = len(self.hf)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False)

    def decode(self, ids) -> str:
        return self.hf.decode(list(ids))


#: The data sets the chapter can train on (same schema: a JSON list of {instruction, input, output}).
DATA_SOURCES = {
    # 1,100 entries, the source material's data (about 200 kB)
    "instruction-data": "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/01_main-chapter-code/instruction-data.json",
    # 52,002 entries (about 22 MB): Stanford Alpaca; needs a smaller batch and allowed_max_length (see the README)
    "alpaca-52k": "https://raw.githubusercontent.com/tatsu-lab/stanford_alpaca/main/alpaca_data.json",
}
FIELDS = ("instruction", "input", "output")


def validate_instruction_data(data, source: str = "the data") -> list[dict]:
    """`data` if it is a non-empty list of {instruction, input, output} records (input may be ""), else a CourseError
    naming the record and the field; duplicates are counted in a warning."""
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
    """The checked records of a local UTF-8 JSON (or JSON Lines) file, or of one of `DATA_SOURCES` by name (downloaded
    once, cached)."""
    if str(path_or_name) in DATA_SOURCES:
        path = download(DATA_SOURCES[str(path_or_name)], f"{path_or_name}.json")
    else:
        path = Path(path_or_name)
        if not path.exists():
            raise CourseError(f"{path}: no such file; pass the path of a JSON file of {{instruction, input, output}} "
                              f"records, or one of the named data sets: {', '.join(DATA_SOURCES)}")
    return validate_instruction_data(read_json(path), source=str(path))


OLLAMA_URL = "http://localhost:11434"


def normalize_tokens(text: str) -> list[str]:
    """Lower-cased words without punctuation (the SQuAD convention, minus its article removal)."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return text.split()


def _f1(overlap: int, predicted: int, reference: int) -> float:
    """The harmonic mean of precision (overlap / predicted) and recall (overlap / reference); two empty texts agree."""
    if not predicted or not reference:
        return float(predicted == reference)
    return 2 * overlap / (predicted + reference)


def token_f1(prediction: str, reference: str) -> float:
    """F1 of the words two texts share, with multiplicity: SQuAD's token F1 without its article removal (a response's
    "a" and "the" are words of it)."""
    pred, ref = normalize_tokens(prediction), normalize_tokens(reference)
    return _f1(sum((Counter(pred) & Counter(ref)).values()), len(pred), len(ref))


def _lcs_length(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1: the longest common word subsequence, as precision and recall, combined harmonically."""
    pred, ref = normalize_tokens(prediction), normalize_tokens(reference)
    return _f1(_lcs_length(pred, ref), len(pred), len(ref))


def _opener():
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a local server: never through a proxy


def ollama_available(url: str = OLLAMA_URL, timeout_s: float = 2.0) -> bool:
    """True when an Ollama server answers at `url` (GET /api/tags lists its models)."""
    try:
        with _opener().open(url.rstrip("/") + "/api/tags", timeout=timeout_s) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


def query_model(prompt: str, model: str = "llama3.2", url: str = OLLAMA_URL, timeout_s: float = 120.0) -> str:
    """The reply of an Ollama model to one user message (POST /api/chat, deterministic options as the source)."""
    payload = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": False,
               "options": {"seed": 123, "temperature": 0, "num_ctx": 2048}}
    request = urllib.request.Request(url.rstrip("/") + "/api/chat", data=json.dumps(payload).encode("utf-8"),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with _opener().open(request, timeout=timeout_s) as response:
            body = response.read().decode("utf-8")
    except urllib.error.HTTPError as exc:  # 404: the model is not pulled
        raise CourseError(f"the Ollama server at {url} answered {exc.code} {exc.reason} for model {model!r}: run "
                          f"`ollama pull {model}`, or pass another model=") from None
    except (OSError, UnicodeDecodeError) as exc:  # the server went away, timed out, or answered garbage
        raise CourseError(f"no reply from the Ollama server at {url} ({type(exc).__name__}: {exc}); check that "
                          "`ollama serve` still runs") from None
    reply = ""
    for number, line in enumerate(body.splitlines(), start=1):  # one object, or one per line when it streams
        try:
            message = json.loads(line) if line.strip() else {}
        except json.JSONDecodeError:
            raise CourseError(f"the Ollama server at {url} sent a reply that is not JSON (line {number}: "
                              f"{line[:80]!r}); is it an Ollama server?") from None
        reply += (message.get("message") or {}).get("content", "") if isinstance(message, dict) else ""
    return reply


def judge_prompt(entry: dict, response_key: str = "model_response") -> str:
    return (f"Given the input `{format_input(entry)}` and correct output `{entry['output']}`, "
            f"score the model response `{entry[response_key]}` on a scale from 0 to 100, where 100 is the best score. "
            "Respond with the integer number only.")


#: A number, optionally a fraction of another ("7/10", "7 out of 10"), as a judge may write its score.
_SCORE = re.compile(r"(?<![\w.])(-?\d+(?:\.\d+)?)(?:\s*(?:/|out of)\s*(\d+(?:\.\d+)?))?", re.IGNORECASE)


def parse_score(reply: str) -> int | None:
    """The judge's 0-100 score when its reply holds exactly one number ("85", "Score: 85%"; "7/10" and "7 out of 10"
    are 70); None for no number, several (a guess) or one out of range."""
    matches = _SCORE.findall(reply) if isinstance(reply, str) else []
    if len(matches) != 1:
        return None
    value, total = float(matches[0][0]), matches[0][1]
    if total:
        if float(total) <= 0 or not 0 <= value <= float(total):
            return None
        value = 100 * value / float(total)
    return round(value) if 0 <= value <= 100 else None


def generate_model_scores(entries: list[dict], response_key: str = "model_response", model: str = "llama3.2",
                          url: str = OLLAMA_URL) -> list[int] | None:
    """A 0-100 score per response from an Ollama judge (replies without a usable one are reported and left out);
    None, with a message saying how to get a judge, when no server answers."""
    if not isinstance(entries, list) or not entries:
        raise CourseError(f"generate_model_scores: entries must be a non-empty list of records, got {entries!r:.60}")
    for i, entry in enumerate(entries):  # checked before the first request: the judge is slow
        for name in (*FIELDS, response_key):
            check_field(entry, name, f"entry {i}", nonempty=False,
                        fix=f"each entry needs {FIELDS} and the response to judge under {response_key!r}")
    if not ollama_available(url):
        print(f"No Ollama server at {url}: skipping the LLM judge (the deterministic scores above stand). To use it: "
              f"install Ollama (https://ollama.com), run `ollama serve` and `ollama pull {model}`, then rerun this cell.")
        return None
    scores = []
    for i, entry in enumerate(entries):
        reply = query_model(judge_prompt(entry, response_key), model=model, url=url)
        score = parse_score(reply)
        if score is None:
            print(f"entry {i}: the judge's reply has no single score 0-100 (left out): {reply[:80]!r}")
        else:
            scores.append(score)
    return scores
