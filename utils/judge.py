"""Evaluating instruction responses: deterministic scores (token-level F1, ROUGE-L) that need nothing, and an
LLM judge through a local Ollama server's HTTP API (the source's approach: a 0-100 score per response) that is
used only when a server answers.
"""

from __future__ import annotations

import json
import re
import string
import urllib.error
import urllib.request

from utils.checks import check_field
from utils.errors import CourseError
from utils.instruction_data import format_input
from utils.instruction_files import FIELDS
from utils.squad import overlap_f1

OLLAMA_URL = "http://localhost:11434"


def normalize_tokens(text: str) -> list[str]:
    """Lower-cased words without punctuation (the SQuAD convention, minus its article removal)."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return text.split()


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of precision and recall of the words two texts share (counted with multiplicity): chapter 02's
    SQuAD token F1 (`overlap_f1`), on words normalised without SQuAD's article removal (a response's "a" and "the"
    are words of it, where SQuAD's script drops them from short extracted answers)."""
    return overlap_f1(normalize_tokens(prediction), normalize_tokens(reference))


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
    if not pred or not ref:
        return float(pred == ref)
    lcs = _lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


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
        if line.strip():
            try:
                message = json.loads(line)
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
    """The judge's score on the 0-100 scale, when its reply holds exactly one number: as it is ("85", "Score:
    85%"), or scaled from a fraction ("7/10" and "7 out of 10" are 70, "85/100" is 85). None when there is no
    number, more than one (which would be a guess), or one outside 0-100 (or outside its fraction)."""
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
    """A 0-100 score per response from an Ollama judge; None (with a message saying how to get one) when no
    server answers. Replies without a usable number are reported and left out."""
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
