"""GPT-2 written out in PyTorch (after rasbt/LLMs-from-scratch, chapters 3-5 and 7), its loader for the Hub's
safetensors checkpoints, generation, the loss, and a training loop that checkpoints and resumes exactly.

Chapter 04 writes these out in its notebook (a test proves the two copies identical); chapter 05 imports them.
"""

from __future__ import annotations

import json
import os
import re
import sys
import uuid
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from utils.checks import check_field, check_int, check_number, check_tensors, load_safetensors, read_json
from utils.errors import CourseArgumentError, CourseError
from utils.hub import hub_errors

#: The configuration the source uses to pre-train GPT-2 small from scratch (no qkv bias, dropout 0.1).
GPT_CONFIG_124M = {
    "vocab_size": 50257,     # vocabulary size of the GPT-2 BPE tokenizer
    "context_length": 1024,  # longest sequence the position embeddings cover
    "emb_dim": 768,          # embedding dimension
    "n_heads": 12,           # attention heads
    "n_layers": 12,          # transformer blocks
    "drop_rate": 0.1,        # dropout rate
    "qkv_bias": False,       # bias in the query, key and value projections
}

#: The four OpenAI GPT-2 sizes, as the source's `model_configs` (the released weights have qkv bias).
_GPT2_BASE = {"vocab_size": 50257, "context_length": 1024, "drop_rate": 0.0, "qkv_bias": True}
GPT_CONFIGS = {
    "gpt2-small (124M)": {**_GPT2_BASE, "emb_dim": 768, "n_layers": 12, "n_heads": 12},
    "gpt2-medium (355M)": {**_GPT2_BASE, "emb_dim": 1024, "n_layers": 24, "n_heads": 16},
    "gpt2-large (774M)": {**_GPT2_BASE, "emb_dim": 1280, "n_layers": 36, "n_heads": 20},
    "gpt2-xl (1558M)": {**_GPT2_BASE, "emb_dim": 1600, "n_layers": 48, "n_heads": 25},
}
#: Where each size lives on the Hugging Face Hub (safetensors, GPT2LMHeadModel format).
GPT2_HUB_IDS = {
    "gpt2-small (124M)": "openai-community/gpt2",
    "gpt2-medium (355M)": "openai-community/gpt2-medium",
    "gpt2-large (774M)": "openai-community/gpt2-large",
    "gpt2-xl (1558M)": "openai-community/gpt2-xl",
}
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


class MultiHeadAttention(nn.Module):
    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False):
        super().__init__()
        assert d_out % num_heads == 0, "d_out must be divisible by num_heads"
        self.d_out = d_out
        self.num_heads = num_heads
        self.head_dim = d_out // num_heads
        self.context_length = context_length
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)  # combines the heads' outputs
        self.dropout = dropout  # a rate: scaled_dot_product_attention applies it to the attention weights

    def forward(self, x):
        b, num_tokens, _ = x.shape
        # (b, num_tokens, d_out) -> (b, num_heads, num_tokens, head_dim)
        queries = self.W_query(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        keys = self.W_key(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        values = self.W_value(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        # softmax(q k^T / sqrt(head_dim)) v with a causal mask: each token sees itself and the tokens before it
        context_vec = F.scaled_dot_product_attention(
            queries, keys, values, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        context_vec = context_vec.transpose(1, 2).reshape(b, num_tokens, self.d_out)
        return self.out_proj(context_vec)


class LayerNorm(nn.Module):
    """scale * (x - mean) / sqrt(var + eps) + shift over the last dimension (biased variance, as GPT-2).

    Computed by `F.layer_norm`: the same function in one fused kernel instead of five elementwise ones, which
    makes the whole model as fast as transformers' GPT-2 (see bench/RESULTS.md); a test checks it against the formula.
    """

    def __init__(self, emb_dim):
        super().__init__()
        self.eps = 1e-5
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x):
        return F.layer_norm(x, self.scale.shape, self.scale, self.shift, self.eps)


class GELU(nn.Module):
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): GELU with the tanh approximation GPT-2 was trained with.

    Computed by `F.gelu(approximate="tanh")`, the same formula in one kernel (a test checks it).
    """

    def forward(self, x):
        return F.gelu(x, approximate="tanh")


class FeedForward(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(cfg["emb_dim"], 4 * cfg["emb_dim"]),
            GELU(),
            nn.Linear(4 * cfg["emb_dim"], cfg["emb_dim"]),
        )

    def forward(self, x):
        return self.layers(x)


class TransformerBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.att = MultiHeadAttention(
            d_in=cfg["emb_dim"],
            d_out=cfg["emb_dim"],
            context_length=cfg["context_length"],
            num_heads=cfg["n_heads"],
            dropout=cfg["drop_rate"],
            qkv_bias=cfg["qkv_bias"],
        )
        self.ff = FeedForward(cfg)
        self.norm1 = LayerNorm(cfg["emb_dim"])
        self.norm2 = LayerNorm(cfg["emb_dim"])
        self.drop_resid = nn.Dropout(cfg["drop_rate"])

    def forward(self, x):
        shortcut = x  # residual connection around attention
        x = self.drop_resid(self.att(self.norm1(x)))
        x = x + shortcut
        shortcut = x  # residual connection around the feed-forward network
        x = self.drop_resid(self.ff(self.norm2(x)))
        return x + shortcut


class GPTModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        check_gpt_config(cfg)  # a missing key or an impossible size: a message, not a KeyError halfway through
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = nn.Dropout(cfg["drop_rate"])
        self.trf_blocks = nn.Sequential(*[TransformerBlock(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = LayerNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)

    def forward(self, in_idx):
        batch_size, seq_len = in_idx.shape
        if seq_len > self.pos_emb.num_embeddings:  # positions beyond the context have no embedding
            raise CourseArgumentError(f"a sequence of {seq_len} tokens is longer than the model's context_length "
                                      f"({self.pos_emb.num_embeddings}); shorten it (allowed_max_length, context_size)")
        tok_embeds = self.tok_emb(in_idx)  # [batch, seq, emb]
        pos_embeds = self.pos_emb(torch.arange(seq_len, device=in_idx.device))  # [seq, emb]
        x = self.drop_emb(tok_embeds + pos_embeds)
        x = self.trf_blocks(x)
        x = self.final_norm(x)
        return self.out_head(x)  # [batch, seq, vocab]


def text_to_token_ids(text, tokenizer):
    encoded = tokenizer.encode(text)
    return torch.tensor(encoded).unsqueeze(0)  # add the batch dimension


def token_ids_to_text(token_ids, tokenizer):
    flat = token_ids.squeeze(0)  # remove the batch dimension
    return tokenizer.decode(flat.tolist())


def generate(model, idx, max_new_tokens, context_size, temperature=0.0, top_k=None, eos_id=None):
    check_int("max_new_tokens", max_new_tokens, minimum=0)
    check_int("context_size", context_size, minimum=1)
    check_number("temperature", temperature, minimum=0)
    check_int("top_k", top_k, minimum=1, optional=True)
    for _ in range(max_new_tokens):
        idx_cond = idx[:, -context_size:]  # crop to the context the model supports
        with torch.no_grad():
            logits = model(idx_cond)
        logits = logits[:, -1, :]  # only the last position predicts the next token
        if top_k is not None:  # keep the top_k logits, -inf for the rest
            top_logits, _ = torch.topk(logits, top_k)
            logits = torch.where(logits < top_logits[:, -1:], torch.tensor(float("-inf"), device=logits.device), logits)
        if temperature > 0.0:  # sample from the temperature-scaled distribution
            probs = torch.softmax(logits / temperature, dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1)
        else:  # greedy decoding
            idx_next = torch.argmax(logits, dim=-1, keepdim=True)
        if eos_id is not None and bool((idx_next == eos_id).all()):
            break  # stop at the end-of-text token
        idx = torch.cat((idx, idx_next), dim=1)
    return idx


def calc_loss_batch(input_batch, target_batch, model, device):
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    logits = model(input_batch)
    # cross-entropy over [batch*seq, vocab] logits; targets of -100 are ignored
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), target_batch.flatten())


def calc_loss_loader(data_loader, model, device, num_batches=None):
    check_int("num_batches", num_batches, minimum=1, optional=True)
    total_loss = 0.0
    if len(data_loader) == 0:
        return float("nan")
    num_batches = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i >= num_batches:
            break
        total_loss += calc_loss_batch(input_batch, target_batch, model, device).item()
    return total_loss / num_batches


# ---------------------------------------------------------------------------------------------------------------
# Loading the OpenAI weights from a transformers GPT2LMHeadModel checkpoint (safetensors)
# ---------------------------------------------------------------------------------------------------------------


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
    return check_gpt_config({
        "vocab_size": hf_config["vocab_size"],
        "context_length": hf_config["n_positions"],
        "emb_dim": hf_config["n_embd"],
        "n_heads": hf_config["n_head"],
        "n_layers": hf_config["n_layer"],
        "drop_rate": drop_rate,
        "qkv_bias": True,
    }, source)


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


def hf_to_gpt_state_dict(hf: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """Rename (and transpose, and split) a GPT2LMHeadModel state dict into GPTModel's names.

    transformers' GPT-2 stores its projections as Conv1D, weight [in, out]: nn.Linear wants [out, in], so each
    is transposed; `c_attn` holds query, key and value side by side and is split in three.
    """
    prefix = "transformer." if "transformer.wte.weight" in hf else ""
    g = lambda name: hf[prefix + name]  # noqa: E731
    sd = {"tok_emb.weight": g("wte.weight"), "pos_emb.weight": g("wpe.weight"),
          "final_norm.scale": g("ln_f.weight"), "final_norm.shift": g("ln_f.bias"),
          # GPT-2 ties its output head to the token embedding (checkpoints store it once, as wte); GPTModel
          # keeps its own copy, as the source does, so fine-tuning may move the two apart
          "out_head.weight": hf.get("lm_head.weight", g("wte.weight")).clone()}
    for b in range(n_layers):
        h, t = f"h.{b}.", f"trf_blocks.{b}."
        q_w, k_w, v_w = g(h + "attn.c_attn.weight").T.chunk(3, dim=0)
        q_b, k_b, v_b = g(h + "attn.c_attn.bias").chunk(3, dim=0)
        sd.update({
            t + "att.W_query.weight": q_w, t + "att.W_key.weight": k_w, t + "att.W_value.weight": v_w,
            t + "att.W_query.bias": q_b, t + "att.W_key.bias": k_b, t + "att.W_value.bias": v_b,
            t + "att.out_proj.weight": g(h + "attn.c_proj.weight").T, t + "att.out_proj.bias": g(h + "attn.c_proj.bias"),
            t + "ff.layers.0.weight": g(h + "mlp.c_fc.weight").T, t + "ff.layers.0.bias": g(h + "mlp.c_fc.bias"),
            t + "ff.layers.2.weight": g(h + "mlp.c_proj.weight").T, t + "ff.layers.2.bias": g(h + "mlp.c_proj.bias"),
            t + "norm1.scale": g(h + "ln_1.weight"), t + "norm1.shift": g(h + "ln_1.bias"),
            t + "norm2.scale": g(h + "ln_2.weight"), t + "norm2.shift": g(h + "ln_2.bias"),
        })
    return {k: v.contiguous() for k, v in sd.items()}


def load_gpt2(model_id_or_path: str | os.PathLike, drop_rate: float = 0.0, device="cpu") -> tuple[GPTModel, dict]:
    """GPTModel with the weights of a GPT2LMHeadModel checkpoint (a Hub id such as "openai-community/gpt2-medium",
    or a local folder), in fp32 and eval mode; returns (model, config). A checkpoint that does not fit (a bad
    config.json, a truncated weights file, missing or mis-shaped tensors) is a CourseError naming the file."""
    folder = resolve_checkpoint(model_id_or_path)
    config_file = folder / "config.json"
    cfg = config_from_hf(read_json(config_file), drop_rate=drop_rate, source=str(config_file))
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CourseError(f"{folder} has no *.safetensors weights (the course loads nothing with pickle)")
    hf: dict[str, torch.Tensor] = {}
    for file in files:
        hf.update(load_safetensors(file))
    try:
        state = hf_to_gpt_state_dict({k: v.float() for k, v in hf.items()}, cfg["n_layers"])
    except KeyError as exc:
        raise CourseError(f"{folder}: the weights have no tensor {exc.args[0]!r}; is this a GPT2LMHeadModel checkpoint "
                          f"with the {cfg['n_layers']} layers its config.json says?") from None
    with torch.device("meta"):
        model = GPTModel(cfg)  # no memory, no random init: load_state_dict(assign=True) brings the weights
    check_tensors(state, model.state_dict(), f"the checkpoint at {folder}")  # names and shapes, before loading
    model.load_state_dict(state, assign=True)
    return model.to(device).eval(), cfg


# ---------------------------------------------------------------------------------------------------------------
# Training with checkpoints that resume exactly (model, optimizer, step, RNG state)
# ---------------------------------------------------------------------------------------------------------------


def evaluate_model(model, train_loader, val_loader, device, eval_iter):
    model.eval()
    with torch.no_grad():
        train_loss = calc_loss_loader(train_loader, model, device, num_batches=eval_iter)
        val_loss = calc_loss_loader(val_loader, model, device, num_batches=eval_iter)
    model.train()
    return train_loss, val_loss


#: The files of a checkpoint written before saves were atomic (one fixed name each).
_LEGACY_FILES = {"model": "model.safetensors", "optimizer": "optimizer.pt", "rng": "rng.safetensors"}
#: Every file a checkpoint folder may hold besides state.json: what a save may delete once its own are in place.
_CHECKPOINT_FILE = re.compile(r"(model|rng)(-[\w-]+)?\.safetensors|optimizer(-[\w-]+)?\.pt|state\.json\.[\w-]+\.tmp")


def _sync(path: Path) -> None:
    """Flush a file (or a folder's list of names) to the disk: a power cut cannot then leave it half written."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder; its renames are written through anyway
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(folder, model, optimizer, state: dict, rng: dict[str, torch.Tensor]) -> Path:
    """Write model weights (safetensors), optimizer state (a tensors-only torch file, read back with
    weights_only=True), RNG states (safetensors) and the loop's counters (JSON) into `folder`, atomically.

    The new files get names of their own (model-step<N>.safetensors, ...) beside the previous checkpoint's. Once
    they are complete on disk, state.json, which names them, is replaced in one step (os.replace); only then are
    the previous checkpoint's files deleted. So at every moment state.json names one complete checkpoint: the
    previous one until the replace, the new one after it. A crash leaves at most some unnamed files behind, which
    the next save deletes."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tag = f"step{state.get('global_step', 0)}"
    if any(folder.glob(f"*-{tag}.*")):  # in use (by the live checkpoint, or left by a crash): never overwrite it
        tag += f"-{uuid.uuid4().hex[:6]}"
    files = {"model": f"model-{tag}.safetensors", "optimizer": f"optimizer-{tag}.pt", "rng": f"rng-{tag}.safetensors"}
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(folder / files["model"]))
    torch.save(optimizer.state_dict(), folder / files["optimizer"])
    save_file({k: v.clone() for k, v in rng.items()}, str(folder / files["rng"]))
    pending = folder / f"state.json.{tag}.tmp"
    pending.write_text(json.dumps({**state, "files": files}, indent=1), encoding="utf-8")
    for name in (*files.values(), pending.name):
        _sync(folder / name)
    os.replace(pending, folder / "state.json")  # the commit: one atomic rename names the new checkpoint
    _sync(folder)
    for path in folder.iterdir():  # the previous checkpoint's files, and any an interrupted save left behind
        if path.name not in files.values() and _CHECKPOINT_FILE.fullmatch(path.name):
            path.unlink(missing_ok=True)
    return folder


def load_checkpoint(folder, model, optimizer) -> tuple[dict, dict[str, torch.Tensor]]:
    """Restore model and optimizer in place from `save_checkpoint`'s folder; return (state, rng).

    Every file is read and checked against the model and the optimizer before either changes: a missing,
    truncated or mismatched file is a CourseError naming it, and leaves both as they were."""
    folder = Path(folder)
    manifest = folder / "state.json"
    if not manifest.is_file():
        raise CourseError(f"no complete checkpoint at {folder} (no state.json); start without resume=True or pick "
                          "another folder")
    state = read_json(manifest)
    if not isinstance(state, dict):
        raise CourseError(f"{manifest}: expected a JSON object of the run's counters, got a {type(state).__name__}; "
                          "the checkpoint is damaged: start without resume=True")
    files = state.pop("files", _LEGACY_FILES)
    for key in _LEGACY_FILES:
        check_field(files, key, f"{manifest}, field 'files'", fix="the checkpoint is damaged: start without resume=True")
    weights = load_safetensors(folder / files["model"])
    rng = load_safetensors(folder / files["rng"])
    check_tensors(weights, model.state_dict(), str(folder / files["model"]))
    optimizer_file = folder / files["optimizer"]
    try:
        optimizer_state = torch.load(optimizer_file, weights_only=True)
    except Exception as exc:  # missing, truncated, or not a tensors-only torch file
        raise CourseError(f"{optimizer_file} cannot be read ({type(exc).__name__}: {str(exc)[:200]}); the checkpoint "
                          "is damaged: start without resume=True") from None
    groups = optimizer_state.get("param_groups") if isinstance(optimizer_state, dict) else None
    if not isinstance(groups, list) or [len(g.get("params", ())) for g in groups] != [
            len(g["params"]) for g in optimizer.param_groups]:
        raise CourseError(f"{optimizer_file} holds the state of an optimizer over other parameters than this one's; "
                          "resume with the optimizer built as in the run that saved it (same parameters and groups)")
    model.load_state_dict(weights)
    optimizer.load_state_dict(optimizer_state)
    return state, rng


def rng_state() -> dict[str, torch.Tensor]:
    """torch's random state (CPU, and every CUDA device): dropout masks and the loaders' shuffles come from it."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    cuda = [state[k] for k in sorted(k for k in state if k.startswith("cuda"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def start_run(checkpoint_dir, model, optimizer, resume: bool) -> tuple[dict, dict]:
    """A fresh run's counters and loss log, or those of the checkpoint in `checkpoint_dir` (model and optimizer
    restored in place) when `resume` is true."""
    log = {"train_losses": [], "val_losses": [], "tokens_seen": [], "steps": []}
    run = {"global_step": 0, "tokens_seen": 0, "epoch": 0, "step_in_epoch": 0}
    if resume:
        saved, rng = load_checkpoint(checkpoint_dir, model, optimizer)
        where = f"{Path(checkpoint_dir) / 'state.json'}"
        for key in run:
            if check_field(saved, key, where, kind=int, fix="the checkpoint is damaged: start without resume=True") < 0:
                raise CourseError(f"{where}: field {key!r} is {saved[key]}; the checkpoint is damaged")
        check_field(saved, "log", where, kind=dict, nonempty=False, fix="the checkpoint is damaged: start without resume=True")
        if not {"cpu", "epoch_cpu"} <= rng.keys():
            raise CourseError(f"{where}: the checkpoint's random state lacks 'cpu' or 'epoch_cpu'; it is damaged: start "
                              "without resume=True")
        log = saved.pop("log")
        run.update(saved)
        run["epoch_rng"] = {k.removeprefix("epoch_"): v for k, v in rng.items() if k.startswith("epoch_")}
        run["resume_rng"] = {k: v for k, v in rng.items() if not k.startswith("epoch_")}
    return log, run


def epoch_batches(train_loader, run: dict, epoch: int):
    """The epoch's batch iterator and the index of its first batch. After a resume, the interrupted epoch's shuffle
    is replayed from its saved random state, the batches it had done are skipped, and the random state the run
    stopped with is restored: the run continues exactly as if it had never stopped."""
    resume_rng = run.pop("resume_rng", None) if epoch == run["epoch"] else None
    if resume_rng is not None:
        set_rng_state(run["epoch_rng"])
    run["epoch_rng"] = rng_state()  # what a checkpoint in this epoch needs to replay its shuffle
    batches = iter(train_loader)
    first = run["step_in_epoch"] if resume_rng is not None else 0
    for _ in range(first):
        next(batches)
    if first > 0:  # (at an epoch's start the two states are the same, and iter() has drawn from it since)
        set_rng_state(resume_rng)
    return batches, first


def save_training_checkpoint(folder, model, optimizer, run: dict, log: dict, epoch: int, step_in_epoch: int,
                             batches_per_epoch: int) -> Path:
    """Checkpoint the run after batch `step_in_epoch` of `epoch` (see `save_checkpoint` for the files)."""
    done = step_in_epoch + 1 == batches_per_epoch  # an epoch's last batch: resume starts the next epoch
    state = {"global_step": run["global_step"], "tokens_seen": run["tokens_seen"], "log": log,
             "epoch": epoch + 1 if done else epoch, "step_in_epoch": 0 if done else step_in_epoch + 1}
    now = rng_state()
    epoch_rng = now if done else run["epoch_rng"]
    rng = {**now, **{f"epoch_{k}": v for k, v in epoch_rng.items()}}
    return save_checkpoint(folder, model, optimizer, state, rng)


def check_loop_args(train_loader, num_epochs, eval_freq, eval_iter, checkpoint_dir=None, checkpoint_every=None,
                    resume=False, stop_after_steps=None) -> None:
    """A training loop's arguments, checked before its first step (CourseArgumentError naming the argument): a
    frequency of 0 would divide by zero only after an optimizer step had already changed the model."""
    check_int("num_epochs", num_epochs, minimum=1)
    check_int("eval_freq", eval_freq, minimum=1, hint="the loop evaluates every eval_freq optimizer steps")
    check_int("eval_iter", eval_iter, minimum=1, optional=True, hint="batches per evaluation, None for all")
    check_int("checkpoint_every", checkpoint_every, minimum=1, optional=True)
    check_int("stop_after_steps", stop_after_steps, minimum=1, optional=True)
    if checkpoint_dir is None and (resume or checkpoint_every):
        raise CourseArgumentError(f"{sys._getframe(1).f_code.co_name}(): resume=True and checkpoint_every need a "
                                  "checkpoint_dir to read and write")
    if len(train_loader) == 0:
        raise CourseError("the training loader has no batches (fewer records than batch_size, with drop_last=True?): "
                          "nothing to train on; lower the batch size or use more data")


def train_model(model, train_loader, val_loader, optimizer, device, num_epochs, eval_freq, eval_iter,
                checkpoint_dir=None, checkpoint_every=None, resume=False, stop_after_steps=None):
    check_loop_args(train_loader, num_epochs, eval_freq, eval_iter, checkpoint_dir, checkpoint_every, resume,
                    stop_after_steps)
    log, run = start_run(checkpoint_dir, model, optimizer, resume)
    model.train()
    bar = tqdm(total=num_epochs * len(train_loader), initial=run["global_step"], desc="training")
    for epoch in range(run["epoch"], num_epochs):
        batches, first = epoch_batches(train_loader, run, epoch)
        for step_in_epoch, (input_batch, target_batch) in enumerate(batches, start=first):
            optimizer.zero_grad()
            loss = calc_loss_batch(input_batch, target_batch, model, device)
            loss.backward()
            optimizer.step()
            run["tokens_seen"] += input_batch.numel()
            run["global_step"] += 1
            bar.update(1)
            if run["global_step"] % eval_freq == 0:  # train and validation loss on eval_iter batches each
                train_loss, val_loss = evaluate_model(model, train_loader, val_loader, device, eval_iter)
                for key, value in zip(log, (train_loss, val_loss, run["tokens_seen"], run["global_step"]), strict=True):
                    log[key].append(value)
                bar.set_postfix(train=f"{train_loss:.3f}", val=f"{val_loss:.3f}")
            stop = stop_after_steps is not None and run["global_step"] >= stop_after_steps
            last = epoch + 1 == num_epochs and step_in_epoch + 1 == len(train_loader)
            if checkpoint_dir is not None and (stop or last or (checkpoint_every and run["global_step"] % checkpoint_every == 0)):
                save_training_checkpoint(checkpoint_dir, model, optimizer, run, log, epoch, step_in_epoch, len(train_loader))
            if stop:  # an interruption, simulated
                bar.close()
                return log
    bar.close()
    return log
