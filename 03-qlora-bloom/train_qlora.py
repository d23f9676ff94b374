"""QLoRA on BLOOM with trl's SFTTrainer, as a script that runs on one device or data-parallel on several.

One GPU:        python 03-qlora-bloom/train_qlora.py --model bigscience/bloom-7b1 --output-dir build/qlora-bloom
Several GPUs:   torchrun --nproc_per_node 2 03-qlora-bloom/train_qlora.py --model bigscience/bloom-7b1 ...
            or  accelerate launch --config_file 03-qlora-bloom/accelerate_ddp.yaml 03-qlora-bloom/train_qlora.py ...
CPU processes:  torchrun --nproc_per_node 2 03-qlora-bloom/train_qlora.py --model <tiny bloom> ... (gloo; the tests)

Data parallel (DDP): every process loads the whole 4-bit model on its own device (device_map={"": local_rank}),
trains on its own shard of each batch, and DDP averages the LoRA gradients, so all copies take the same step.
Only the main process writes the adapter.

Bad arguments stop before anything is loaded, with one line and exit status 2: the numbers and paths when they are
parsed, the data file next (a second), then the target modules on the model's architecture built from its config on
the meta device (seconds), and only then the 4-bit model (minutes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import sys
from pathlib import Path

from utils.checks import check_target_modules
from utils.errors import CourseError
from utils.hub import hub_errors
from utils.lessons.environment import pick_dtype


def _positive(kind):
    """An argparse type: a number of `kind` (int or float) above 0, finite, or a usage error naming the value."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'} > 0")
        return value
    return parse


def _seed(text: str) -> int:
    """An argparse type: an integer seed that NumPy takes, 0 to 2**32 - 1."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer from 0 to 2**32 - 1")
    return value


def _module_name(text: str) -> str:
    """An argparse type: one module name such as query_key_value (a list written as one string is refused)."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a module name: give the names separated by spaces, "
                                         "as in --target-modules query_key_value dense")
    return text


def _folder(text: str) -> Path:
    """An argparse type: a folder to write into, which may not exist yet but may not be a file."""
    path = Path(text)
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path: give a folder")
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is an existing file, not a folder: give a folder path, "
                                         "or move the file away")
    return path


class _OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage error said in one line (and exit status 2): the option, the value, what it must be."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


def parse_args(argv=None):
    parser = _OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bigscience/bloom-7b1", help="Hub id or local folder of a BLOOM model")
    parser.add_argument("--data", default="fka/awesome-chatgpt-prompts", help="Hub dataset id or a .csv/.json file")
    parser.add_argument("--column", default="prompt", help="the column that holds the prompt text")
    parser.add_argument("--limit", type=_positive(int), default=200, help="train on the first LIMIT records")
    parser.add_argument("--steps", type=_positive(int), default=100, help="optimizer steps")
    parser.add_argument("--output-dir", required=True, type=_folder, help="where the adapter (and checkpoints) go")
    parser.add_argument("--lr", type=_positive(float), default=2e-4)
    parser.add_argument("--batch-size", type=_positive(int), default=4, help="per process")
    parser.add_argument("--max-length", type=_positive(int), default=256)
    parser.add_argument("--target-modules", nargs="+", type=_module_name, default=["query_key_value"],
                        help="the linear layers LoRA adapts, separated by spaces")
    parser.add_argument("--seed", type=_seed, default=0)
    parser.add_argument("--record", type=_folder, help="write this process's rank, world size, losses and a checksum "
                                                    "of its LoRA weights to RECORD/rank<R>.json (to check DDP)")
    return parser.parse_args(argv)


def check_targets_on_meta(model_id, target_modules) -> None:
    """CourseError unless the model has a module named for each of `target_modules`, checked on its architecture built
    from its config.json on the meta device (every name and shape, no weights, no memory): seconds, not the minutes
    that loading the 4-bit model takes."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(model_id)
    if str(model_id).startswith((".", "/", "~", "\\")) or folder.exists():  # a local folder, not a Hub id
        if not (folder / "config.json").is_file():
            raise CourseError(f"--model {model_id}: " + ("no config.json in that folder: pass the folder a model was "
                              "saved into (save_pretrained)" if folder.is_dir() else "no such folder: check the path, "
                              "or give a Hub id such as bigscience/bloom-7b1"))
    with hub_errors(model_id):
        config = AutoConfig.from_pretrained(model_id)
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config)
    check_target_modules(skeleton, target_modules)


def lora_checksum(model) -> str:
    """sha256 of the trainable (LoRA) weights: equal on every rank when DDP kept the copies in sync."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().cpu().float().numpy().tobytes())
    return digest.hexdigest()


def recording_trainer_class():
    """SFTTrainer that also keeps this process's own loss of every batch, before DDP averages across ranks."""
    from trl import SFTTrainer

    class RecordingSFTTrainer(SFTTrainer):
        local_losses: list[float] = []

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
            self.local_losses.append(float((result[0] if return_outputs else result).detach()))
            return result

    return RecordingSFTTrainer


def main(argv=None) -> int:
    args = parse_args(argv)
    from utils.ch03_qlora import adapters_to_fp32, load_prompt_dataset, require_4bit_support

    # The data first: a bad --data file fails here, in a second, not after minutes of loading the 4-bit model.
    data = load_prompt_dataset(args.data, column=args.column, limit=args.limit)
    check_targets_on_meta(args.model, args.target_modules)  # a wrong name fails here, before the 4-bit model loads
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, set_seed
    from trl import SFTConfig, SFTTrainer

    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    distributed = int(os.environ.get("WORLD_SIZE", 1)) > 1  # started by torchrun / accelerate launch
    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if on_gpu else torch.device("cpu")
    set_seed(args.seed)
    require_4bit_support(device)
    dtype = pick_dtype(device)

    bnb_config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                    bnb_4bit_compute_dtype=dtype)
    with hub_errors(args.model):  # offline: a CourseError naming the model and the way out
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model, quantization_config=bnb_config, dtype=dtype,
                                                     device_map={"": local_rank if on_gpu else "cpu"})
    # Freeze and upcast; checkpointing is SFTConfig's below (peft would turn it on by transformers' deprecated name).
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    lora = LoraConfig(r=16, lora_alpha=16, lora_dropout=0.05, target_modules=args.target_modules,
                      task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)

    config = SFTConfig(
        output_dir=str(args.output_dir),
        max_steps=args.steps,
        learning_rate=args.lr,
        per_device_train_batch_size=args.batch_size,
        max_length=args.max_length,
        dataset_text_field="text",
        fp16=dtype == torch.float16,
        bf16=dtype == torch.bfloat16,
        use_cpu=not on_gpu,
        ddp_backend="gloo" if distributed and not on_gpu else None,  # gloo for CPU processes; one process: none
        ddp_find_unused_parameters=False,
        activation_checkpointing=True,  # transformers 5's name for gradient checkpointing
        activation_checkpointing_kwargs={"use_reentrant": False},  # the reentrant kind clashes with DDP's hooks
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=args.seed,
    )
    trainer_class = recording_trainer_class() if args.record is not None else SFTTrainer
    trainer = trainer_class(model=model, args=config, train_dataset=data, processing_class=tokenizer)
    adapters_to_fp32(trainer.model)  # trl casts them to bf16; fp16 AMP (a T4) needs fp32 trainable parameters
    trainer.train()

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    if not all(math.isfinite(loss) for loss in losses):
        raise RuntimeError(f"rank {trainer.args.process_index}: the loss is not finite: {losses}")
    if args.record is not None:
        args.record.mkdir(parents=True, exist_ok=True)
        record = {"rank": trainer.args.process_index, "world_size": trainer.args.world_size,
                  "local_rank": local_rank, "losses": losses, "global_step": trainer.state.global_step,
                  "local_losses": trainer.local_losses,
                  "lora_checksum": lora_checksum(trainer.model)}
        (args.record / f"rank{trainer.args.process_index}.json").write_text(json.dumps(record, indent=2))
    if trainer.is_world_process_zero():  # only the main process writes the adapter
        trainer.model.save_pretrained(args.output_dir / "adapter")
        tokenizer.save_pretrained(args.output_dir / "adapter")
        print(f"adapter saved to {args.output_dir / 'adapter'}")
    return 0


def cli(argv=None) -> int:
    """`main`, with a problem the learner can fix said in one line and exit status 2 (argparse's own for usage)."""
    try:
        return main(argv)
    except CourseError as exc:
        print(f"{Path(sys.argv[0]).name}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
