"""MultiSmpLLM: cold-start popularity from a user's past posts, by instruction fine-tuning and IDPOP alignment.

Stages (each reads and writes files under `output_dir`, so each can be run and inspected alone):
1. `prepare_instructions`: users with >= 5 posts; a `main` sample gives SFT train questions (post n-1) and
   test questions (post n); a disjoint `preference` sample gives the prompts for alignment (test form, as
   the paper's second sample of users).                                -> instructions.parquet, users.json
2. `train_sft`: LoRA (peft) or Freeze (last N decoder layers) fine-tuning, loss on answer tokens only.
                                                                        -> sft/
3. `build_preference_data`: sample the SFT model `n_samples` times per prompt; the answer with the smaller
   absolute error is chosen; pairs with equal errors (both unparseable included) are skipped; reference
   log-probabilities come once from the frozen SFT model and are stored.  -> preference.parquet (+ .json)
4. `train_alignment`: DPO / DPOP / IDPOP (training/idpop.py) from the SFT weights.  -> align-<loss>/
5. `evaluate`: greedy answers on the test questions, robust number parsing, MAE and Spearman (SRC) per
   k-shot, answers that are not a number counted; LightGBM on per-user history features and two trivial
   history baselines in the same table.                                 -> eval/predictions.parquet, metrics.json
"""

from __future__ import annotations

import gc
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import pyarrow as pa

from notellm.data.coldstart import (
    ColdStartExample,
    InstructionConfig,
    build_instructions,
    examples_from_table,
    examples_to_table,
    group_user_posts,
    split_users,
)
from notellm.errors import ConfigError, DataError, NotellmError
from notellm.io import read_json, write_json, write_parquet
from notellm.models.backbone import contiguous_head_input
from notellm.models.lora import add_lora, decoder_layers

Log = Callable[[str], None]
META_FILE = "notellm_coldstart.json"
IGNORE = -100


# ----------------------------------------------------------------------------------------------- config
@dataclass
class DataSourceConfig:
    source: str = "hackernews"          # hackernews | demo | notes (a Note-table parquet)
    path: str | None = None             # CSV for hackernews, parquet for notes
    demo_notes: int = 3000
    demo_seed: int = 0
    main_users: int | None = 120        # users giving SFT train (post n-1) and test (post n) questions
    preference_users: int | None = 80   # disjoint users giving the alignment prompts
    seed: int = 0
    instructions: InstructionConfig = field(default_factory=InstructionConfig)


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    last_n_layers: int | None = None    # adapt only the last N decoder layers (None: all); backward stops there
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class ModelConfig:
    backbone: str = "gemma-3-270m"
    method: str = "lora"                # lora | freeze
    lora: LoraSettings = field(default_factory=LoraSettings)
    freeze_last_n: int = 2              # Freeze: train only the last N decoder layers
    dtype: str = "float32"              # weights (and LoRA/optimizer state) stay in this dtype
    autocast: str | None = None         # e.g. bfloat16: mixed-precision forward (2x faster on CPUs with AMX)
    device: str = "auto"                # auto (cuda if available, else cpu) | cpu | cuda | cuda:1 ...
    max_length: int = 384               # prompt + answer tokens; longer prompts lose their oldest tokens


@dataclass
class SFTConfig:
    epochs: float = 2.0
    batch_size: int = 8
    lr: float = 3e-4
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0


@dataclass
class AlignConfig:
    loss: str = "idpop"                 # dpo | dpop | idpop
    beta: float = 0.1
    lam: float = 0.5                    # lambda: DPOP's fixed weight, IDPOP's numerator
    alpha: float = 1.0                  # IDPOP weight decay (eq. 13)
    delta: float = 0.5                  # IDPOP: avoids dividing by zero (eq. 14)
    placement: str = "outside"          # outside (the paper's eq. 12) | inside (Smaug's DPOP)
    prompts: str = "preference_users"   # preference_users (the paper) | train_questions
    n_samples: int = 2                  # answers sampled per prompt (the paper: 2)
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 8
    sample_batch_size: int = 16
    rebuild_preference: bool = False    # resample even if preference.parquet exists
    epochs: float = 1.0
    batch_size: int = 8                 # pairs per step
    lr: float = 5e-4
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 0


@dataclass
class EvalConfig:
    models: list[str] = field(default_factory=lambda: ["sft", "align-dpo", "align-idpop"])
    batch_size: int = 16
    max_new_tokens: int = 8
    lightgbm: bool = True
    history_baselines: bool = True      # mean / last score of the k past posts
    compare_to: str = "sft"             # bootstrap 95% interval of (model MAE - this model's MAE)


@dataclass
class ColdStartConfig:
    output_dir: str = "runs/coldstart"
    threads: int | None = None          # torch CPU threads (None: torch's default)
    data: DataSourceConfig = field(default_factory=DataSourceConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def _quiet(_: str) -> None:
    pass


def _setup_torch(cfg: ColdStartConfig) -> None:
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)


# ------------------------------------------------------------------------------------------------- data
def load_notes(cfg: DataSourceConfig) -> tuple[pa.Table, str]:
    """The Note table and a name for error messages."""
    if cfg.source == "hackernews":
        from notellm.data.readers import read_hackernews

        if not cfg.path:
            raise ConfigError("data.path must name the Hacker News CSV (hacker_news.csv)")
        return read_hackernews(cfg.path), str(cfg.path)
    if cfg.source == "demo":
        from notellm.data.demo import generate_demo

        corpus = generate_demo(cfg.demo_notes, seed=cfg.demo_seed, n_users=0)  # notes only, no click events
        return corpus.notes, f"<demo n={cfg.demo_notes} seed={cfg.demo_seed}>"
    if cfg.source == "notes":
        from notellm.data.schema import read_notes

        if not cfg.path:
            raise ConfigError("data.path must name a Note-table parquet")
        return read_notes(cfg.path), str(cfg.path)
    raise ConfigError(f"data.source must be hackernews, demo or notes, got {cfg.source!r}")


@dataclass
class InstructionSet:
    train: list[ColdStartExample]
    test: list[ColdStartExample]
    preference: list[ColdStartExample]
    notes: pa.Table
    summary: dict[str, Any]


def make_instruction_set(table: pa.Table, cfg: DataSourceConfig, source: str = "<notes>") -> InstructionSet:
    icfg = cfg.instructions
    if icfg.min_posts < max(icfg.shots) + 2:
        raise ConfigError(f"min_posts ({icfg.min_posts}) must be >= max(shots) + 2 = {max(icfg.shots) + 2}")
    users, skips = group_user_posts(table, icfg, source)
    if not users:
        raise DataError(f"no user has >= {icfg.min_posts} posts", file=source, field="author_id")
    main, pref = split_users(users, cfg.main_users, cfg.preference_users, cfg.seed)
    train = build_instructions(table, main, icfg, "train", source)
    test = build_instructions(table, main, icfg, "test", source)
    preference = build_instructions(table, pref, icfg, "test", source)
    summary = dict(
        source=source, notes=len(table), eligible_users=len(users), main_users=len(main),
        preference_users=len(pref), skipped=skips.describe(), shots=icfg.shots,
        train_questions=len(train), test_questions=len(test), preference_prompts=len(preference),
    )
    return InstructionSet(train, test, preference, table, summary)


def prepare_instructions(cfg: ColdStartConfig, log: Log = _quiet) -> InstructionSet:
    """Build the instruction data and write it to output_dir/instructions.parquet (+ users.json)."""
    table, source = load_notes(cfg.data)
    data = make_instruction_set(table, cfg.data, source)
    out = Path(cfg.output_dir)
    rows = data.train + data.test + data.preference
    kinds = ["main"] * (len(data.train) + len(data.test)) + ["preference"] * len(data.preference)
    write_parquet(examples_to_table(rows).append_column("users", pa.array(kinds)), out / "instructions.parquet")
    write_json(data.summary, out / "users.json")
    log(f"instructions: {data.summary}")
    return data


def read_instruction_set(out_dir: str | Path) -> tuple[list[ColdStartExample], list[ColdStartExample], list[ColdStartExample]]:
    path = Path(out_dir) / "instructions.parquet"
    if not path.exists():
        raise NotellmError(f"{path} does not exist: run `notellm coldstart sft` first")
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    users = table.column("users").to_pylist()
    examples = examples_from_table(table.drop_columns(["users"]))
    train = [e for e, u in zip(examples, users) if u == "main" and e.split == "train"]
    test = [e for e, u in zip(examples, users) if u == "main" and e.split == "test"]
    pref = [e for e, u in zip(examples, users) if u == "preference"]
    return train, test, pref


# ------------------------------------------------------------------------------------------ tokenisation
@dataclass
class Encoded:
    prompt_ids: list[int]
    answer_ids: list[int]
    truncated: bool = False


def encode(tokenizer, prompt: str, answer: str, max_length: int) -> Encoded:
    """Prompt tokens (with the tokenizer's BOS) and answer tokens + EOS; an over-long prompt keeps its first
    token (BOS) and its last tokens (the question is at the end)."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] if answer else []
    room = max_length - len(answer_ids)
    truncated = len(prompt_ids) > room
    if truncated:
        prompt_ids = prompt_ids[:1] + prompt_ids[len(prompt_ids) - (room - 1):]
    return Encoded(prompt_ids, answer_ids, truncated)


def collate(items: Sequence[Encoded], pad_id: int) -> dict[str, Any]:
    """Left-padded batch of prompt+answer. Labels are -100 except on answer tokens; every sequence ends at
    the last column, so logits for the last `n_keep` positions cover every answer."""
    import torch

    seqs = [e.prompt_ids + e.answer_ids for e in items]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    for i, (item, seq) in enumerate(zip(items, seqs)):
        start = width - len(seq)
        input_ids[i, start:] = torch.tensor(seq)
        attention[i, start:] = 1
        if item.answer_ids:
            labels[i, width - len(item.answer_ids):] = torch.tensor(item.answer_ids)
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    n_keep = max(len(e.answer_ids) for e in items) + 1
    return dict(input_ids=input_ids, attention_mask=attention, position_ids=position_ids, labels=labels, n_keep=n_keep)


def amp(model, autocast: str | None):
    """Mixed-precision context for forward passes (a no-op when `autocast` is None)."""
    import contextlib

    import torch

    if not autocast:
        return contextlib.nullcontext()
    return torch.autocast(next(model.parameters()).device.type, dtype=getattr(torch, autocast))


def pick_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _on(model, batch: dict[str, Any]) -> dict[str, Any]:
    device = next(model.parameters()).device
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


def answer_token_logprobs(model, batch: dict[str, Any], autocast: str | None = None):
    """(log-probabilities of the answer tokens [B, n_keep-1], mask [B, n_keep-1]); logits are computed only
    for the last positions (the LM head over a 262k vocabulary dominates the cost otherwise)."""
    import torch

    batch = _on(model, batch)
    n_keep = batch["n_keep"]
    with amp(model, autocast):
        out = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"], logits_to_keep=n_keep, use_cache=False,
        )
    logits = out.logits[:, :-1].float()               # position t predicts token t+1
    targets = batch["labels"][:, -(n_keep - 1):]
    mask = targets != IGNORE
    logps = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return logps * mask, mask


def sft_loss(model, batch: dict[str, Any], autocast: str | None = None):
    """Mean negative log-likelihood of the answer tokens (prompt and padding carry no loss)."""
    logps, mask = answer_token_logprobs(model, batch, autocast)
    return -logps.sum() / mask.sum().clamp(min=1)


def sequence_logprobs(model, batch: dict[str, Any], autocast: str | None = None):
    """Summed answer log-probability per sequence, log pi(y|x)."""
    logps, _ = answer_token_logprobs(model, batch, autocast)
    return logps.sum(-1)


# ------------------------------------------------------------------------------------------------ models
def make_trainable(model, mcfg: ModelConfig):
    """Apply LoRA or Freeze to a freshly loaded backbone; return the model to train."""
    if mcfg.method == "lora":
        n_layers = len(decoder_layers(model))
        top = mcfg.lora.last_n_layers or 0
        if not 0 <= top <= n_layers:
            raise ConfigError(f"model.lora.last_n_layers must be in 1..{n_layers}, got {top}")
        return add_lora(model, mcfg.lora.r, mcfg.lora.alpha, mcfg.lora.dropout, mcfg.lora.target_modules, top,
                        task_type="CAUSAL_LM")
    if mcfg.method == "freeze":
        layers = decoder_layers(model)
        if not 1 <= mcfg.freeze_last_n <= len(layers):
            raise ConfigError(f"model.freeze_last_n must be in 1..{len(layers)}, got {mcfg.freeze_last_n}")
        for p in model.parameters():
            p.requires_grad_(False)
        for layer in list(layers)[-mcfg.freeze_last_n:]:
            for p in layer.parameters():
                p.requires_grad_(True)
        return model
    raise ConfigError(f"model.method must be lora or freeze, got {mcfg.method!r}")


def save_trained(model, tokenizer, mcfg: ModelConfig, out_dir: str | Path, info: dict[str, Any]) -> Path:
    """LoRA: the peft adapter; Freeze: the trained layers as safetensors. Plus a metadata JSON."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if mcfg.method == "lora":
        model.save_pretrained(out)
    else:
        from safetensors.torch import save_file

        tensors = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        tmp = out / "trainable.safetensors.tmp"
        save_file(tensors, str(tmp))
        tmp.replace(out / "trainable.safetensors")
    write_json(dict(model=asdict(mcfg), **info), out / META_FILE)
    return out


def load_trained(model_dir: str | Path, trainable: bool = False):
    """(model, tokenizer, ModelConfig) for a folder written by save_trained."""
    from notellm.config import from_dict
    from notellm.models.backbone import load_backbone

    model_dir = Path(model_dir)
    meta_path = model_dir / META_FILE
    if not meta_path.exists():
        raise NotellmError(f"{model_dir} is not a trained cold-start model (no {META_FILE})")
    mcfg = from_dict(ModelConfig, read_json(meta_path)["model"])
    model, tokenizer = load_backbone(mcfg.backbone, dtype=mcfg.dtype)
    model = model.to(pick_device(mcfg.device))
    if mcfg.method == "lora":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(model_dir), is_trainable=trainable)
    else:
        from safetensors.torch import load_file

        model = make_trainable(model, mcfg)
        state = load_file(str(model_dir / "trainable.safetensors"))
        missing = set(state) - {n for n, _ in model.named_parameters()}
        if missing:
            raise NotellmError(f"{model_dir}: weights for unknown parameters {sorted(missing)[:3]}")
        model.load_state_dict(state, strict=False)
        if not trainable:
            for p in model.parameters():
                p.requires_grad_(False)
    model.train(trainable)
    return model, tokenizer, mcfg


# -------------------------------------------------------------------------------------------- training
def _batches(n: int, batch_size: int, epochs: float, seed: int) -> list[list[int]]:
    """Index batches for `epochs` passes (a fractional last epoch takes the first batches of a shuffle)."""
    rng = random.Random(seed)
    per_epoch = math.ceil(n / batch_size)
    total = max(1, round(per_epoch * epochs))
    out: list[list[int]] = []
    while len(out) < total:
        order = list(range(n))
        rng.shuffle(order)
        out.extend(order[i:i + batch_size] for i in range(0, n, batch_size))
    return out[:total]


def _optimizer(model, lr: float, weight_decay: float, warmup_ratio: float, steps: int):
    import torch
    from transformers import get_linear_schedule_with_warmup

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = get_linear_schedule_with_warmup(opt, int(warmup_ratio * steps), steps)
    return opt, sched, params


def sft_step(model, batch: dict[str, Any], opt, params, max_grad_norm: float, autocast: str | None = None) -> float:
    import torch

    loss = sft_loss(model, batch, autocast)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def train_sft(cfg: ColdStartConfig, log: Log = _quiet, data: InstructionSet | None = None) -> Path:
    """Instruction fine-tuning on the train questions; writes output_dir/sft."""
    import torch

    from notellm.models.backbone import load_backbone

    _setup_torch(cfg)
    data = data or prepare_instructions(cfg, log)
    torch.manual_seed(cfg.sft.seed)
    model, tokenizer = load_backbone(cfg.model.backbone, dtype=cfg.model.dtype, seed=cfg.sft.seed)
    model = make_trainable(model.to(pick_device(cfg.model.device)), cfg.model)
    model.train()
    encoded = [encode(tokenizer, e.prompt, e.answer, cfg.model.max_length) for e in data.train]
    batches = _batches(len(encoded), cfg.sft.batch_size, cfg.sft.epochs, cfg.sft.seed)
    opt, sched, params = _optimizer(model, cfg.sft.lr, cfg.sft.weight_decay, cfg.sft.warmup_ratio, len(batches))
    losses, start = [], time.time()
    for step, idx in enumerate(batches, start=1):
        losses.append(sft_step(model, collate([encoded[i] for i in idx], tokenizer.pad_token_id), opt, params,
                               cfg.sft.max_grad_norm, cfg.model.autocast))
        sched.step()
        if step % 10 == 0 or step == len(batches):
            log(f"sft step {step}/{len(batches)} loss {sum(losses[-10:]) / len(losses[-10:]):.4f} "
                f"({time.time() - start:.0f}s)")
    info = dict(
        stage="sft", examples=len(encoded), truncated=sum(e.truncated for e in encoded), steps=len(batches),
        losses=losses, seconds=round(time.time() - start, 1), sft=asdict(cfg.sft), data=data.summary,
    )
    return save_trained(model, tokenizer, cfg.model, Path(cfg.output_dir) / "sft", info)


# ------------------------------------------------------------------------------------------ generation
@dataclass
class Sample:
    text: str
    token_ids: list[int]   # generated tokens up to and including EOS
    logp: float | None     # log pi(y|x) of those tokens under the generating model (raw logits)


def prompt_items(tokenizer, prompts: Sequence[str], max_length: int, max_new_tokens: int) -> list[Encoded]:
    """Prompts encoded exactly as generation sees them (room left for `max_new_tokens`)."""
    return [encode(tokenizer, p, "", max_length - max_new_tokens) for p in prompts]


def _sampled_logps(out, start: int, eos_id: int):
    """Per sequence: generated ids up to the first EOS (inclusive) and their summed log-probability
    (None when the logits were not kept)."""
    import torch

    new = out.sequences[:, start:]
    is_eos = (new == eos_id).long()
    keep = (is_eos.cumsum(-1) - is_eos) == 0                   # tokens before and including the first EOS
    ids = [row[mask].tolist() for row, mask in zip(new, keep)]
    if not out.logits:
        return ids, [None] * len(ids)
    # One step at a time: the raw logits (before any sampling processor) over a 262k vocabulary are large.
    logps = torch.stack([
        torch.log_softmax(step.float(), dim=-1).gather(-1, new[:, t:t + 1]).squeeze(-1)
        for t, step in enumerate(out.logits)
    ], dim=1)
    return ids, (logps * keep).sum(-1).tolist()


def generate_answers(
    model, tokenizer, prompts: Sequence[str], max_length: int, *, sample: bool = False, n: int = 1,
    temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 8, batch_size: int = 16,
    autocast: str | None = None, with_logprobs: bool = True, log: Log = _quiet,
) -> list[list[Sample]]:
    """`n` answers per prompt (greedy when sample=False; sampling without top-k), with their token ids and
    log-probability under `model` (so sampled answers carry their reference log-probability for free)."""
    import torch

    model.eval()
    contiguous_head_input(model)
    items = prompt_items(tokenizer, prompts, max_length, max_new_tokens)
    answers: list[list[Sample]] = []
    for start in range(0, len(items), batch_size):
        batch = _on(model, collate(items[start:start + batch_size], tokenizer.pad_token_id))
        kwargs = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if sample else dict(do_sample=False)
        with torch.no_grad(), amp(model, autocast):
            out = model.generate(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                max_new_tokens=max_new_tokens, num_return_sequences=n, return_dict_in_generate=True,
                output_logits=with_logprobs, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                **kwargs,
            )
        ids, logps = _sampled_logps(out, batch["input_ids"].shape[1], tokenizer.eos_token_id)
        samples = [Sample(tokenizer.decode(i, skip_special_tokens=True), i, lp) for i, lp in zip(ids, logps)]
        answers.extend(samples[i:i + n] for i in range(0, len(samples), n))
        log(f"generated {min(start + batch_size, len(items))}/{len(items)}")
    return answers


# ------------------------------------------------------------------------------------- preference data
def pick_pair(answers: Sequence[str], target: float) -> tuple[int, int, float, float] | str:
    """(index of chosen, index of rejected, error chosen, error rejected), or why the prompt gives no pair.

    Chosen = smallest absolute error, rejected = largest; an answer without a number has an infinite error."""
    from notellm.evaluation.numbers import parse_number

    errors = []
    for a in answers:
        v = parse_number(a)
        errors.append(math.inf if v is None else abs(v - target))
    if all(math.isinf(e) for e in errors):
        return "unparseable"
    best = min(range(len(answers)), key=lambda i: errors[i])
    worst = max(range(len(answers)), key=lambda i: errors[i])
    if errors[best] == errors[worst]:
        return "equal_error"
    return best, worst, errors[best], errors[worst]


def reference_logprobs(model, tokenizer, prompts: Sequence[str], answer_ids: Sequence[Sequence[int]],
                       max_length: int, max_new_tokens: int, batch_size: int, autocast: str | None = None) -> list[float]:
    """log pi(y|x) of given answer tokens, prompts encoded as for generation."""
    import torch

    model.eval()
    items = [Encoded(p.prompt_ids, list(a)) for p, a in
             zip(prompt_items(tokenizer, prompts, max_length, max_new_tokens), answer_ids)]
    out: list[float] = []
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            batch = collate(items[start:start + batch_size], tokenizer.pad_token_id)
            out.extend(sequence_logprobs(model, batch, autocast).tolist())
    return out


def build_preference_data(cfg: ColdStartConfig, log: Log = _quiet) -> pa.Table:
    """Sample the SFT model, keep (chosen, rejected) pairs with the frozen SFT model's log-probabilities.

    The reference log-probability of a sampled answer is read from the sampling pass itself (raw logits of
    the frozen SFT model, so it equals a separate forward pass; tests check this). Cached in
    output_dir/preference.parquet and shared by the DPO, DPOP and IDPOP runs."""
    import pyarrow.parquet as pq
    import torch

    out = Path(cfg.output_dir)
    path = out / "preference.parquet"
    if path.exists() and not cfg.align.rebuild_preference:
        log(f"using cached {path}")
        return pq.read_table(path)
    acfg = cfg.align
    train, _, pref = read_instruction_set(out)
    examples = pref if acfg.prompts == "preference_users" else train if acfg.prompts == "train_questions" else None
    if examples is None:
        raise ConfigError(f"align.prompts must be preference_users or train_questions, got {acfg.prompts!r}")
    if not examples:
        raise NotellmError("no prompts for preference data (data.preference_users is 0?)")
    if acfg.n_samples < 2:
        raise ConfigError("align.n_samples must be >= 2")
    model, tokenizer, mcfg = load_trained(out / "sft")
    torch.manual_seed(acfg.seed)
    start = time.time()
    sampled = generate_answers(
        model, tokenizer, [e.prompt for e in examples], mcfg.max_length, sample=True, n=acfg.n_samples,
        temperature=acfg.temperature, top_p=acfg.top_p, max_new_tokens=acfg.max_new_tokens,
        batch_size=acfg.sample_batch_size, autocast=mcfg.autocast, log=log,
    )
    rows, skipped = [], {"unparseable": 0, "equal_error": 0}
    for e, samples in zip(examples, sampled):
        picked = pick_pair([s.text for s in samples], e.target)
        if isinstance(picked, str):
            skipped[picked] += 1
            continue
        c, r, err_c, err_r = picked
        rows.append(dict(
            user_id=e.user_id, shots=e.shots, prompt=e.prompt, target=e.target, samples=[s.text for s in samples],
            chosen=samples[c].text, rejected=samples[r].text, chosen_ids=samples[c].token_ids,
            rejected_ids=samples[r].token_ids, err_chosen=err_c, err_rejected=err_r,
            ref_logp_chosen=samples[c].logp, ref_logp_rejected=samples[r].logp,
        ))
    if not rows:
        raise NotellmError(f"no preference pairs from {len(examples)} prompts: {skipped}")
    table = pa.Table.from_pylist(rows)
    write_parquet(table, path)
    summary = dict(prompts=len(examples), pairs=len(rows), skipped=skipped, n_samples=acfg.n_samples,
                   temperature=acfg.temperature, seconds=round(time.time() - start, 1))
    write_json(summary, out / "preference.json")
    log(f"preference data: {summary}")
    return table


# ---------------------------------------------------------------------------------------------- align
def pair_weights(table: pa.Table, acfg: AlignConfig) -> list[float]:
    """mu_j per pair for IDPOP (eq. 13-14); M_min / M_max over every answer's error in D_A."""
    import torch

    from notellm.training.idpop import error_range, idpop_mu

    err_c = table.column("err_chosen").to_pylist()
    err_r = table.column("err_rejected").to_pylist()
    m_min, m_max = error_range(err_c + err_r)
    mu = idpop_mu(torch.tensor(err_c), torch.tensor(err_r), acfg.lam, acfg.alpha, acfg.delta, m_min, m_max)
    return mu.tolist()


def _disable_dropout(model) -> None:
    """As TRL's DPO does: the policy must equal the reference at step 0, so no dropout noise in log pi."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def train_alignment(cfg: ColdStartConfig, log: Log = _quiet) -> Path:
    """DPO / DPOP / IDPOP from the SFT weights; writes output_dir/align-<loss>."""
    import torch

    from notellm.training.idpop import PreferenceLoss

    _setup_torch(cfg)
    acfg = cfg.align
    out = Path(cfg.output_dir)
    table = build_preference_data(cfg, log)
    loss_fn = PreferenceLoss(acfg.loss, beta=acfg.beta, lam=acfg.lam, placement=acfg.placement)
    mu = pair_weights(table, acfg) if acfg.loss == "idpop" else [0.0] * len(table)
    model, tokenizer, mcfg = load_trained(out / "sft", trainable=True)
    _disable_dropout(model)
    prompts = prompt_items(tokenizer, table.column("prompt").to_pylist(), mcfg.max_length, acfg.max_new_tokens)
    chosen = [Encoded(p.prompt_ids, a) for p, a in zip(prompts, table.column("chosen_ids").to_pylist())]
    rejected = [Encoded(p.prompt_ids, a) for p, a in zip(prompts, table.column("rejected_ids").to_pylist())]
    ref_c = torch.tensor(table.column("ref_logp_chosen").to_pylist())
    ref_r = torch.tensor(table.column("ref_logp_rejected").to_pylist())
    mu_t = torch.tensor(mu)
    torch.manual_seed(acfg.seed)
    batches = _batches(len(table), acfg.batch_size, acfg.epochs, acfg.seed)
    opt, sched, params = _optimizer(model, acfg.lr, 0.0, acfg.warmup_ratio, len(batches))
    history, start = [], time.time()
    for step, idx in enumerate(batches, start=1):
        batch = collate([chosen[i] for i in idx] + [rejected[i] for i in idx], tokenizer.pad_token_id)
        logps = sequence_logprobs(model, batch, mcfg.autocast).cpu()
        res = loss_fn(logps[: len(idx)], logps[len(idx):], ref_c[idx], ref_r[idx], mu_t[idx])
        res.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, acfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        history.append(dict(loss=float(res.loss.detach()), dpo=float(res.dpo_term.detach().mean()),
                            penalty=float(res.penalty.detach().mean()), chosen_shift=float(res.chosen_shift.mean()),
                            margin=float(res.margin.mean())))
        if step % 5 == 0 or step == len(batches):
            recent = history[-5:]
            log(f"{acfg.loss} step {step}/{len(batches)} loss {sum(h['loss'] for h in recent) / len(recent):.4f} "
                f"chosen shift {sum(h['chosen_shift'] for h in recent) / len(recent):+.3f} ({time.time() - start:.0f}s)")
    info = dict(stage="align", align=asdict(acfg), pairs=len(table), steps=len(batches), history=history,
                mu_mean=sum(mu) / len(mu), seconds=round(time.time() - start, 1), parent=str(out / "sft"))
    return save_trained(model, tokenizer, mcfg, out / f"align-{acfg.loss}", info)


# ----------------------------------------------------------------------------------------- evaluation
def history_features(examples: Sequence[ColdStartExample], notes: pa.Table | None = None) -> "Any":
    """Per-question features for LightGBM: statistics of the k past scores, plus the asked post's title
    length, hour, weekday, hashtag count, first category and hours since the user's previous post."""
    import numpy as np
    import pandas as pd

    rows = []
    cols = {c: notes.column(c).to_pylist() for c in ("title", "published_at", "hashtags", "category")} if notes is not None else None
    for e in examples:
        s = np.asarray(e.history_scores, dtype=float)
        f = dict(hist_mean=s.mean(), hist_last=s[-1], hist_std=s.std(), hist_min=s.min(), hist_max=s.max(),
                 hist_first=s[0], hist_trend=s[-1] - s[0])
        if cols is not None:
            when, prev = cols["published_at"][e.target_row], cols["published_at"][e.history_rows[-1]]
            f.update(title_chars=len(cols["title"][e.target_row] or ""), hour=when.hour, weekday=when.weekday(),
                     n_tags=len(cols["hashtags"][e.target_row] or []),
                     hours_since_prev=(when - prev).total_seconds() / 3600,
                     category=(cols["category"][e.target_row] or ["-"])[0])
        rows.append(f)
    frame = pd.DataFrame(rows)
    if "category" in frame:
        frame["category"] = frame["category"].astype("category")
    return frame


def lightgbm_predictions(
    train: Sequence[ColdStartExample], test: Sequence[ColdStartExample], notes: pa.Table | None, seed: int = 0
) -> list[float]:
    """One LightGBM (L1 objective, as MAE is the metric) per k, trained on the k-shot labelled questions."""
    import lightgbm as lgb

    preds: dict[int, float] = {}
    for k in sorted({e.shots for e in test}):
        tr = [e for e in train if e.shots == k]
        te_idx = [i for i, e in enumerate(test) if e.shots == k]
        feats = history_features(tr + [test[i] for i in te_idx], notes)
        if "category" in feats:  # the same category levels for train and test
            feats["category"] = feats["category"].astype(str).astype("category")
        x_tr, x_te = feats.iloc[: len(tr)], feats.iloc[len(tr):]
        model = lgb.LGBMRegressor(objective="l1", n_estimators=200, learning_rate=0.05, num_leaves=15,
                                  min_child_samples=10, subsample=0.8, subsample_freq=1, colsample_bytree=0.8,
                                  random_state=seed, verbose=-1)
        model.fit(x_tr, [e.target for e in tr])
        for i, p in zip(te_idx, model.predict(x_te)):
            preds[i] = float(p)
    return [preds[i] for i in range(len(test))]


def score_predictions(targets: Sequence[float], predictions: Sequence[float | None],
                      fallback: Sequence[float]) -> dict[str, Any]:
    """MAE and Spearman (SRC) on the answers that are numbers; non-numbers counted; MAE with non-numbers
    replaced by `fallback` (the mean of the user's past scores) so every model is scored on every question."""
    import numpy as np

    from notellm.evaluation.regression import regression_metrics

    t = np.asarray(targets, dtype=float)
    ok = np.array([p is not None for p in predictions])
    p = np.array([np.nan if v is None else v for v in predictions], dtype=float)
    filled = np.where(ok, p, np.asarray(fallback, dtype=float))
    res: dict[str, Any] = dict(n=len(t), non_number=int((~ok).sum()), non_number_rate=float((~ok).mean()))
    if ok.sum() >= 2:
        parsed = regression_metrics(t[ok], p[ok])  # Spearman is NaN when every answer is the same number
        res["mae"], res["src"] = parsed["mae"], parsed["spearman"]
    else:
        res["mae"], res["src"] = float("nan"), float("nan")
    res["mae_filled"] = float(np.abs(filled - t).mean())
    return res


def filled_predictions(predictions: Sequence[float | None], fallback: Sequence[float]) -> list[float]:
    return [f if p is None else p for p, f in zip(predictions, fallback)]


def evaluate(cfg: ColdStartConfig, models: Sequence[str] | None = None, log: Log = _quiet) -> dict[str, Any]:
    """Answers of each model on the test questions, LightGBM and history baselines; metrics per k-shot."""
    import numpy as np

    from notellm.evaluation.numbers import parse_number

    _setup_torch(cfg)
    out = Path(cfg.output_dir)
    train, test, pref = read_instruction_set(out)
    targets = [e.target for e in test]
    fallback = [float(np.mean(e.history_scores)) for e in test]
    predictions: dict[str, list[float | None]] = {}
    raw: dict[str, list[str]] = {}
    for name in models if models is not None else cfg.eval.models:
        model_dir = out / name if (out / name).exists() else Path(name)
        model, tokenizer, mcfg = load_trained(model_dir)
        start = time.time()
        answers = generate_answers(model, tokenizer, [e.prompt for e in test], mcfg.max_length,
                                   max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size,
                                   autocast=mcfg.autocast, with_logprobs=False, log=log)
        raw[name] = [a[0].text for a in answers]
        predictions[name] = [parse_number(a) for a in raw[name]]
        log(f"{name}: answered {len(test)} questions in {time.time() - start:.0f}s")
        del model
        gc.collect()
    if cfg.eval.history_baselines:
        predictions["history-mean"] = fallback
        predictions["history-last"] = [e.history_scores[-1] for e in test]
    if cfg.eval.lightgbm:
        notes, _ = load_notes(cfg.data)
        labelled = train + pref  # the labelled questions the LLM pipeline saw (SFT and alignment)
        predictions["lightgbm"] = lightgbm_predictions(labelled, test, notes, seed=cfg.data.seed)
    from notellm.evaluation.regression import bootstrap_metrics

    # Paired bootstrap over test questions of (model MAE - baseline MAE), non-numbers filled as in mae_filled.
    baseline = cfg.eval.compare_to if cfg.eval.compare_to in predictions else None
    boots = bootstrap_metrics(targets, {n: filled_predictions(p, fallback) for n, p in predictions.items()},
                              baseline=baseline, seed=cfg.data.seed)
    metrics: dict[str, Any] = {}
    for name, preds in predictions.items():
        metrics[name] = {"all": score_predictions(targets, preds, fallback)}
        if "mae_diff" in boots[name]:
            d = boots[name]["mae_diff"]
            metrics[name]["all"][f"mae_filled_minus_{baseline}"] = [d.value, d.low, d.high]
        for k in sorted({e.shots for e in test}):
            idx = [i for i, e in enumerate(test) if e.shots == k]
            metrics[name][f"{k}-shot"] = score_predictions([targets[i] for i in idx], [preds[i] for i in idx],
                                                           [fallback[i] for i in idx])
    pred_table = examples_to_table(test).drop_columns(["prompt"])
    for name, preds in predictions.items():
        pred_table = pred_table.append_column(f"pred:{name}", pa.array(preds, pa.float64()))
    for name, texts in raw.items():
        pred_table = pred_table.append_column(f"raw:{name}", pa.array(texts, pa.string()))
    write_parquet(pred_table, out / "eval" / "predictions.parquet")
    write_json(metrics, out / "eval" / "metrics.json")
    return metrics


def metrics_rows(metrics: dict[str, Any], shots: Iterable[int]) -> list[list[str]]:
    """Table rows: model, then MAE / SRC / non-number share per k-shot."""
    rows = []
    for name, per in metrics.items():
        row = [name]
        for k in shots:
            m = per[f"{k}-shot"]
            row += [f"{m['mae']:.3f}", f"{m['src']:.3f}", f"{m['non_number']}/{m['n']}"]
        rows.append(row)
    return rows
