"""The course's runtime package: what the notebooks, scripts and tests import. Hand-written plumbing, one line each:

- errors: CourseError and CourseArgumentError, raised for problems a learner can fix
- checks: argument checks, and file readers that name the file, the record and the field
- paths: the repository root, the fixtures, the cache, build/, and the REPO_URL learners clone
- smoke: the smoke switch, the fixtures by name, and the tiny checkpoints (`make setup` builds them)
- hub: Hub errors that say what to do, and cached downloads
- machine: device and dtype, the environment summary, pins, peak memory, check_released
- colab: what the Colab setup cell installs
- real_models: the real models' published configs, for real-scale counts on the meta device
- resume: checkpoints that resume a hand-written training loop exactly
- generation: text from a Hugging Face model, where generating is a tool, not the lesson
- ch01_peft, ch01_methods: chapter 01's reviews, recipe checks, base model and adapter saving; its methods' registry
- ch02_squad: chapter 02's SQuAD file, record and argument checks
- ch03_qlora: chapter 03's prompt data, 4-bit checks, and trl and bitsandbytes workarounds
- ch04_gpt2: chapter 04's checkpoints, tokenizer, instruction data, and the LLM judge's checks and errors

utils/lessons/ holds the modules `make sync` generates from notebook cells marked `#| export <module>` (edit the
cells): gpt and instruction_data (chapter 04), peft_recipes and peft_task (chapter 01), quantization and memory_budget
(chapter 03).
"""

import logging

# bitsandbytes >= 0.50 on a CPU with AVX512-BF16 logs this at import: it tries to fetch optional kernels from the Hub
# (the `kernels` package, not installed) and falls back to its own CPU kernels, which the course uses. Harmless, and
# nothing a learner can act on, so filtered by its exact message, here: every notebook and script imports this package
# before peft, trl or bitsandbytes.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    lambda record: not record.getMessage().startswith("Failed to load CPU gemm_4bit_forward from kernels-community"))


def key_figure(name: str, value: object) -> None:
    """Print the figure a notebook reports, in the form `make run`'s summary collects (`Key figure: name = value`)."""
    print(f"Key figure: {name} = {value}")
