"""Chapter 04: deterministic response scores and the Ollama judge client (against a local fake server), as its
notebook writes them."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from tools.nbexport import load
from utils.errors import CourseError

JUDGE = load("04-instruction-gpt2/01_instruction_finetuning.ipynb")  # the evaluation's code, from its notebook
generate_model_scores, ollama_available, parse_score = JUDGE.generate_model_scores, JUDGE.ollama_available, JUDGE.parse_score
query_model, rouge_l, token_f1 = JUDGE.query_model, JUDGE.rouge_l, JUDGE.token_f1


def test_token_f1():
    assert token_f1("The cat sat.", "the CAT sat") == 1.0
    assert token_f1("a b c d", "a b") == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert token_f1("x y", "a b") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("", "a") == 0.0
    assert token_f1("a a b", "a b b") == pytest.approx(2 / 3)  # counts with multiplicity


def test_rouge_l():
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
    # LCS("a b c d e", "a c e f") = "a c e": precision 3/5, recall 3/4
    assert rouge_l("a b c d e", "a c e f") == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert rouge_l("d c b a", "a b c d") == pytest.approx(0.25)  # order matters, unlike token F1
    assert token_f1("d c b a", "a b c d") == 1.0
    assert rouge_l("x", "y") == 0.0


@pytest.mark.parametrize(("reply", "score"), [
    ("85", 85), ("Score: 85.", 85), ("85%", 85), ("85.0", 85),
    ("Score: 7/10", 70), ("7 out of 10", 70), ("85/100", 85), ("3/5", 60),  # fractions, scaled to 0-100
    ("none", None), ("150", None), ("-5", None), ("11/10", None), ("3/0", None),  # no score, or out of range
    ("On a scale from 0 to 100: 75", None),  # several numbers: which one is the score would be a guess
])
def test_parse_score(reply, score):
    assert parse_score(reply) == score


class _FakeOllama(BaseHTTPRequestHandler):
    requests: list = []

    def do_GET(self):
        if self.path == "/api/tags":
            self._reply({"models": [{"name": "llama3.2:latest"}]})
        else:
            self.send_error(404)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, body))
        prompt = body["messages"][0]["content"]
        if body["model"] == "not-pulled":
            return self.send_error(404, "model not found")
        if prompt == "STREAM":  # Ollama's default: one JSON object per line, the last one empty and done
            return self._reply_lines([{"message": {"role": "assistant", "content": part}, "done": False}
                                      for part in ("8", "5")] + [{"message": {"content": ""}, "done": True}])
        if prompt == "NOT OLLAMA":
            return self._reply({"choices": [{"text": "85"}]})  # another server's JSON
        content = "not a number" if "FAIL" in prompt else ("90" if "Blue" in prompt else "15")
        self._reply({"model": body["model"], "created_at": "2026-11-23T00:00:00Z",
                     "message": {"role": "assistant", "content": content}, "done": True})

    def _reply(self, payload):
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _reply_lines(self, payloads):
        data = "".join(json.dumps(p) + "\n" for p in payloads).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_ollama():
    server = HTTPServer(("127.0.0.1", 0), _FakeOllama)
    _FakeOllama.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_judge_against_a_fake_ollama(fake_ollama, capsys):
    assert ollama_available(fake_ollama)
    entries = [
        {"instruction": "Name a color.", "input": "", "output": "Blue.", "model_response": "Blue"},
        {"instruction": "Name an animal.", "input": "", "output": "Cat.", "model_response": "Table"},
        {"instruction": "FAIL", "input": "", "output": "x", "model_response": "y"},
    ]
    scores = generate_model_scores(entries, model="llama3.2", url=fake_ollama)
    assert scores == [90, 15]
    assert "entry 2" in capsys.readouterr().out
    path, body = _FakeOllama.requests[0]
    assert path == "/api/chat" and body["model"] == "llama3.2" and body["options"]["temperature"] == 0
    assert "score the model response `Blue`" in body["messages"][0]["content"]
    assert query_model("Blue?", url=fake_ollama) == "90"


def test_judge_without_a_server_says_so_and_does_not_fail(capsys):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    assert not ollama_available(url, timeout_s=1)
    assert generate_model_scores([{"instruction": "a", "input": "", "output": "b", "model_response": "c"}], url=url) is None
    assert "No Ollama server" in capsys.readouterr().out
    with pytest.raises(CourseError, match=r"no reply from the Ollama server at .* \(URLError: .*`ollama serve` still runs"):
        query_model("x", url=url, timeout_s=1)


def test_a_streamed_reply_is_joined_and_a_failed_request_says_what_to_do(fake_ollama):
    assert query_model("STREAM", url=fake_ollama) == "85"
    with pytest.raises(CourseError, match=r"answered 404 .* model 'not-pulled': run `ollama pull not-pulled`"):
        query_model("Blue?", model="not-pulled", url=fake_ollama)
    with pytest.raises(CourseError, match=r"not Ollama's JSON \(KeyError: 'message'\); is it an Ollama server\?"):
        query_model("NOT OLLAMA", url=fake_ollama)
