"""03-qlora-bloom/train_qlora.py run as two real data-parallel processes on the CPU (torchrun, gloo), tiny BLOOM.

`accelerate launch --cpu --num_processes 2` would start only one process without MPI; torchrun starts two.
What "the losses agree" means here, exactly: the Trainer logs the mean over ranks of each rank's own batch loss
(all-gathered before logging), so both ranks log bit-identical losses; that logged value equals the mean of the
two ranks' local losses (to float32 rounding); the local losses differ (each rank trained on its own shard);
and since DDP averages the gradients, both ranks end with bit-identical LoRA weights.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from utils.errors import CourseError
from utils.paths import ROOT
from utils.smoke import fixture_path, tiny_checkpoint

SCRIPT = ROOT / "03-qlora-bloom" / "train_qlora.py"
TORCHRUN = Path(sys.executable).with_name("torchrun")
STEPS = 4


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    out, records = tmp_path / "out", tmp_path / "records"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [str(TORCHRUN), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           str(SCRIPT), "--model", tiny_checkpoint("bloom"), "--data", str(fixture_path("prompts")),
           "--steps", str(STEPS), "--lr", "1e-2", "--output-dir", str(out), "--record", str(records)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    ranks = [json.loads((records / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert sorted(p.name for p in records.iterdir()) == ["rank0.json", "rank1.json"]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["world_size"] == 2 and r["global_step"] == STEPS for r in ranks)
    logged0, logged1 = ranks[0]["losses"], ranks[1]["losses"]
    assert len(logged0) == STEPS and logged0 == logged1  # all-reduced before logging: bit-identical
    assert all(math.isfinite(x) for x in logged0)
    local0, local1 = ranks[0]["local_losses"], ranks[1]["local_losses"]
    assert len(local0) == len(local1) == STEPS
    assert local0 != local1  # different shards of each batch
    for logged, a, b in zip(logged0, local0, local1, strict=True):
        assert abs(logged - (a + b) / 2) < 1e-5
    assert ranks[0]["lora_checksum"] == ranks[1]["lora_checksum"]  # averaged gradients, identical updates

    adapters = sorted(out.rglob("adapter_model.safetensors"))
    assert adapters == [out / "adapter" / "adapter_model.safetensors"]
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert not list(out.rglob("model.safetensors")) and not list(out.rglob("pytorch_model.bin"))


def test_accelerate_ddp_config_is_multi_gpu_data_parallel():
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ROOT / "03-qlora-bloom" / "accelerate_ddp.yaml"))
    assert config.distributed_type.value == "MULTI_GPU"
    assert config.num_processes == 2 and config.num_machines == 1 and not config.use_cpu
    assert not config.fsdp_config and not config.deepspeed_config  # plain DDP: a full model copy per GPU


def _script():
    spec = importlib.util.spec_from_file_location("train_qlora", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bad_data_fails_before_the_model_is_loaded(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def no_load(*args, **kwargs):
        raise AssertionError("the 4-bit model was loaded before --data was read")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_load)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", no_load)
    bad = tmp_path / "prompts.csv"
    bad.write_text("act,prompt\nPoet,I want you, to act as a poet\n")
    with pytest.raises(CourseError, match=r"prompts.csv, line 2: 3 fields where the header has 2"):
        _script().main(["--model", tiny_checkpoint("bloom"), "--data", str(bad), "--output-dir", str(tmp_path / "out")])


@pytest.mark.parametrize(("argv", "message"), [
    (["--steps", "0"], "argument --steps: '0' is not an integer > 0"),
    (["--limit", "-5"], "argument --limit: '-5' is not an integer > 0"),
    (["--batch-size", "two"], "argument --batch-size: 'two' is not an integer > 0"),
    (["--max-length", "1.5"], "argument --max-length: '1.5' is not an integer > 0"),
    (["--lr", "nan"], "argument --lr: 'nan' is not a number > 0"),
    (["--lr", "0"], "argument --lr: '0' is not a number > 0"),
], ids=["no steps", "negative limit", "a word", "a fraction", "a NaN rate", "a zero rate"])
def test_bad_arguments_are_usage_errors_that_name_the_option(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        _script().parse_args(["--output-dir", "out", *argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
