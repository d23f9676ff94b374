"""Device and dtype choice, seeding, the environment summary, peak memory."""

from __future__ import annotations

import sys
import types
import warnings

import pytest
import torch

from tools import nbexport
from utils import machine
from utils.lessons import environment

ENVIRONMENT_CHECK = "01-peft-setup/00_environment_check.ipynb"


@pytest.mark.parametrize(
    ("device", "capability", "expected"),
    [("cpu", None, torch.float32), ("cuda", (7, 5), torch.float16), ("cuda", (7, 0), torch.float16),
     ("cuda", (8, 0), torch.bfloat16), ("cuda", (9, 0), torch.bfloat16)],
)
def test_dtype_follows_the_device(device: str, capability, expected) -> None:
    assert environment.pick_dtype(device, capability=capability) is expected


@pytest.mark.parametrize("cuda", [False, True], ids=["no GPU", "a GPU"])
def test_device_follows_cuda(monkeypatch, cuda: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert machine.pick_device() == torch.device("cuda" if cuda else "cpu")


def test_pins_are_read_and_mismatches_reported(tmp_path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# the stack\ntorch>=2.6,<2.16\npytest==0.0.1  # wrong on purpose\nNot_A-Package==1.0\n")
    pins = machine.pinned_versions(requirements)
    assert pins == {"pytest": "0.0.1", "not-a-package": "1.0"}
    mismatches = machine.version_mismatches(pins)
    assert mismatches["not-a-package"] == (None, "1.0")
    assert mismatches["pytest"][1] == "0.0.1" and mismatches["pytest"][0] != "0.0.1"


def test_pins_follow_included_files(tmp_path) -> None:
    (tmp_path / "ml.txt").write_text("peft==1.0\ntrl==2.0  # included\n")
    (tmp_path / "requirements.txt").write_text("torch>=2.6\n-r ml.txt\npandas==3.0\n")
    assert machine.pinned_versions(tmp_path / "requirements.txt") == {"peft": "1.0", "trl": "2.0", "pandas": "3.0"}


def test_colab_is_checked_against_the_colab_set(monkeypatch) -> None:
    assert environment.requirements_file().name == "requirements.txt"
    assert {"transformers", "pandas", "ipykernel"} <= machine.pinned_versions(environment.requirements_file()).keys()
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert environment.requirements_file().name == "requirements-colab.txt"
    pins = machine.pinned_versions(environment.requirements_file())
    assert {"transformers", "peft", "trl", "bitsandbytes"} <= pins.keys()
    assert not {"pandas", "ipykernel", "torch", "matplotlib"} & pins.keys()  # Colab's own


def test_the_installed_stack_matches_the_pins() -> None:
    assert machine.version_mismatches(machine.pinned_versions(environment.requirements_file())) == {}


def test_environment_summary_names_what_a_learner_needs() -> None:
    summary = environment.environment_summary()
    for key in ("python", "torch", "cuda", "gpu", "compute capability", "gpu memory (GiB)", "bitsandbytes backend",
                "compute dtype", "version mismatches"):
        assert key in summary
    assert summary["compute dtype"] == ("float32" if not torch.cuda.is_available() else summary["compute dtype"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no mismatch here, so no warning
        environment.print_environment()


T4 = {"gpu": "Tesla T4", "compute dtype": "float16", "gpu memory (GiB)": 14.7, "bitsandbytes backend": "cuda",
      "version mismatches": {}}


@pytest.mark.parametrize(("summary", "says", "never"), [
    (T4, ["Tesla T4: compute in float16", "no bf16 below compute capability 8.0", "loading will work"], ["NOT"]),
    ({**T4, "gpu": "NVIDIA A100", "compute dtype": "bfloat16"}, ["A100: compute in bfloat16"], ["no bf16", "NOT"]),
    ({**T4, "gpu": None, "compute dtype": "float32", "bitsandbytes backend": "cpu"}, ["No GPU", "smoke mode"], ["NOT"]),
    ({**T4, "bitsandbytes backend": "unavailable (ImportError: x)", "version mismatches": {"peft": "installed 0.1"}},
     ["loading will NOT work: pip install -r", "differ from the tested pins"], []),
])
def test_the_environment_checks_advice(summary, says, never) -> None:
    """00_environment_check's advice, from summaries of machines this one is not (a T4, an A100, no GPU)."""
    text = "\n".join(nbexport.load(ENVIRONMENT_CHECK).advice(summary))
    assert all(s in text for s in says) and not any(n in text for n in never), text


@pytest.mark.parametrize(("gpu_gib", "fits"), [(14.7, ["yes"] * 5), (8.0, ["yes", "no", "no", "yes", "yes"]),
                                               (None, ["-"] * 5)])
def test_which_recipes_fit_a_gpu(gpu_gib, fits) -> None:
    table = nbexport.load(ENVIRONMENT_CHECK).recipes_that_fit(gpu_gib)
    assert list(table["fits this GPU"]) == fits  # a T4 (14.7 GiB usable) fits every chapter's recipe


def test_peak_memory_sees_a_large_allocation_on_cpu() -> None:
    with machine.peak_memory("cpu") as small:
        torch.zeros(1000)
    with machine.peak_memory("cpu") as big:
        x = torch.ones(64, 1024, 1024)  # 256 MiB, touched so it is resident
        del x
    assert big.added_bytes > 200 * 2**20
    assert small.added_bytes < 50 * 2**20
    assert big.peak_gib == big.peak_bytes / 2**30


def test_key_figure_prints_the_collected_form(capsys) -> None:
    from utils import key_figure

    key_figure("accuracy", 0.75)
    assert capsys.readouterr().out == "Key figure: accuracy = 0.75\n"


def test_check_released_names_what_is_still_referenced() -> None:
    from utils.errors import CourseError

    model = torch.nn.Linear(4, 4)
    holder = {"model": model}  # e.g. a trainer that still holds the model
    watched = machine.watch(model)
    del model
    with pytest.raises(CourseError, match="Linear is still referenced"):
        machine.check_released("cpu", watched)
    holder.clear()
    assert machine.check_released("cpu", watched) == 0 and watched[0]() is None


def test_check_released_frees_reference_cycles() -> None:
    class Trainer:  # a trainer and its callbacks refer to each other, as transformers' do
        pass

    trainer = Trainer()
    trainer.me = trainer
    watched = machine.watch(trainer)
    del trainer
    assert machine.check_released("cpu", watched) == 0
