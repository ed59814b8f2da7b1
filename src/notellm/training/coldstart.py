"""MultiSmpLLM: cold-start popularity from a user's past posts, by instruction fine-tuning and IDPOP alignment,
as two recipes of the shared engine.

Stages (each reads and writes files under `output_dir`, so each can be run, resumed and inspected alone):
1. instructions: users with >= 5 posts; a `main` sample gives SFT train questions (post n-1) and test questions
   (post n); a disjoint `preference` sample gives the prompts for alignment (test form, as the paper's second
   sample of users).                                            -> instructions.parquet, users.json
2. SFT (`SFTRecipe`): LoRA or Freeze (last N decoder layers), loss on answer tokens only.   -> sft/model
3. preference data: sample the SFT model `align.n_samples` times per prompt; the answer with the smaller absolute
   error is chosen; pairs with equal errors (both unparseable included) are skipped; reference log-probabilities
   come from the sampling pass of the frozen SFT model and are stored.   -> preference.parquet (+ .json)
4. alignment (`AlignRecipe`): DPO / DPOP / IDPOP (`losses.preference`) from the SFT weights. -> align-<loss>/model
5. evaluation: `evaluation.coldstart.evaluate`.                 -> eval/predictions.parquet, metrics.json

The shared knobs (`epochs`, `lr`, `batch_size`, ...) at the top level train SFT; the `align:` section may set
any of them again for alignment (`align.lr`, ...; unset: the top-level value). `notellm coldstart align` puts
shared knobs given on its command line into the `align:` section, so `lr=1e-4` there means alignment's lr.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Sequence

import pyarrow as pa
import torch
from torch import nn

from notellm.data.coldstart import (DataSourceConfig, Encoded, InstructionSet, collate, encode, load_notes,
                                    make_instruction_set, read_instruction_set, write_instruction_set)
from notellm.errors import ConfigError, NotellmError
from notellm.evaluation.coldstart import EvalConfig
from notellm.inference.coldstart import answer_token_logprobs, generate_answers, prompt_items, sequence_logprobs
from notellm.io import write_json, write_parquet
from notellm.losses import AnswerNLLLoss, PreferenceLoss, error_range, idpop_mu
from notellm.losses.preference import LOSS_KINDS
from notellm.models.coldstart import ColdStartModelConfig, load_coldstart_model, make_trainable, write_coldstart
from notellm.models.lora import adapters_in_float32
from notellm.training.engine import Callback, Engine, Recipe, TrainingArgs

# the shared knobs the `align:` section may set again for alignment
ALIGN_STAGE_KEYS = ("epochs", "max_steps", "lr", "batch_size", "grad_accum", "warmup_steps", "warmup_ratio",
                    "max_grad_norm", "time_budget_min")


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
    epochs: float | None = None         # alignment's own value of a shared knob (null: the top-level one)
    max_steps: int | None = None
    lr: float | None = None
    batch_size: int | None = None       # preference pairs per process per micro-step
    grad_accum: int | None = None
    warmup_steps: int | None = None
    warmup_ratio: float | None = None
    max_grad_norm: float | None = None
    time_budget_min: float | None = None

    def __post_init__(self):
        if self.loss not in LOSS_KINDS:
            raise ConfigError(f"align.loss must be one of {list(LOSS_KINDS)}, not {self.loss!r}")
        if self.placement not in ("outside", "inside"):
            raise ConfigError(f"align.placement must be outside or inside, not {self.placement!r}")
        if self.prompts not in ("preference_users", "train_questions"):
            raise ConfigError(f"align.prompts must be preference_users or train_questions, not {self.prompts!r}")
        if self.n_samples < 2:
            raise ConfigError("align.n_samples must be >= 2")

    def stage_name(self) -> str:
        """The run's folder under output_dir: align-<loss>, with -inside when the penalty sits in the sigmoid
        (so the paper's and Smaug's placement of one loss can be trained and compared side by side)."""
        return f"align-{self.loss}" + ("-inside" if self.placement == "inside" else "")


_OLD_SFT_KEYS = ("epochs", "batch_size", "lr", "warmup_ratio", "weight_decay", "max_grad_norm", "seed")


@dataclass
class ColdStartConfig(TrainingArgs):
    output_dir: str = "runs/coldstart"
    epochs: float = 2.0
    lr: float = 3e-4
    batch_size: int = 8                 # SFT questions per process per micro-step
    scheduler: str = "linear"
    data: DataSourceConfig = field(default_factory=DataSourceConfig)
    model: ColdStartModelConfig = field(default_factory=ColdStartModelConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    renamed: ClassVar[dict[str, str]] = {
        **TrainingArgs.renamed, **{f"sft.{k}": k for k in _OLD_SFT_KEYS},
        **{f"model.lora.{k}": f"lora.{k}" for k in ("r", "alpha", "dropout", "target_modules")},
        "model.lora.last_n_layers": "lora.top_layers", "model.lora": "lora", "model.autocast": "bf16",
        "model.device": "device", "align.seed": "seed",
    }

    def __post_init__(self):
        super().__post_init__()
        for name, cls in (("data", DataSourceConfig), ("model", ColdStartModelConfig), ("align", AlignConfig),
                          ("eval", EvalConfig)):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, cls(**getattr(self, name)))

    def stage(self, name: str) -> "ColdStartConfig":
        """The config a stage trains with: its own output folder, and for alignment the `align:` values."""
        root = Path(self.output_dir)
        if name == "sft":
            return replace(self, output_dir=str(root / "sft"))
        values = {k: getattr(self.align, k) for k in ALIGN_STAGE_KEYS if getattr(self.align, k) is not None}
        return replace(self, output_dir=str(root / self.align.stage_name()), **values)


def align_overrides(overrides: Sequence[str]) -> list[str]:
    """For `notellm coldstart align`: shared knobs on its command line set alignment's values."""
    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        out.append(f"align.{key.strip()}{sep}{value}" if key.strip() in ALIGN_STAGE_KEYS else item)
    return out


# ---- instructions ----------------------------------------------------------------------------------------
def prepare_instructions(cfg: ColdStartConfig) -> InstructionSet:
    """Build the instruction data and write it to output_dir/instructions.parquet (+ users.json)."""
    table, source = load_notes(cfg.data)
    data = make_instruction_set(table, cfg.data, source)
    write_instruction_set(data, cfg.output_dir)
    return data


def _main_first(engine: Engine | None):
    import contextlib

    return engine.accelerator.main_process_first() if engine is not None else contextlib.nullcontext()


# ---- modules ---------------------------------------------------------------------------------------------
class SFTModule(nn.Module):
    """The LM and the answer-token NLL (normalised over the global batch's answer tokens)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.loss = model, AnswerNLLLoss()

    def forward(self, **batch) -> dict[str, torch.Tensor]:
        logps, mask = answer_token_logprobs(self.model, batch)
        return {"loss": self.loss(logps, mask)}


class AlignModule(nn.Module):
    """The policy LM and a preference loss on the summed answer log-probabilities of chosen and rejected."""

    def __init__(self, model: nn.Module, loss: PreferenceLoss):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, ref_chosen, ref_rejected, mu, **batch) -> dict[str, torch.Tensor]:
        logps = sequence_logprobs(self.model, batch).float()
        n = ref_chosen.shape[0]
        res = self.loss(logps[:n], logps[n:], ref_chosen, ref_rejected, mu)
        return {"loss": res.loss, "dpo": res.dpo_term.detach().mean(), "penalty": res.penalty.detach().mean(),
                "chosen_shift": res.chosen_shift.mean(), "rejected_shift": (logps[n:].detach() - ref_rejected).mean(),
                "margin": res.margin.mean()}


def _disable_dropout(model) -> None:
    """As TRL's DPO does: the policy must equal the reference at step 0, so no dropout noise in log pi."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


# ---- SFT -------------------------------------------------------------------------------------------------
class SFTRecipe(Recipe):
    kind = "coldstart"
    input_keys = ("data.path",)

    def __init__(self, cfg: ColdStartConfig, data: InstructionSet | None = None):
        self.root = cfg
        self.args = cfg.stage("sft")
        self.data = data

    def build(self, engine: Engine | None = None) -> nn.Module:
        from notellm.models.backbone import load_backbone

        cfg = self.args
        self.bf16 = engine.bf16 if engine is not None else False
        with _main_first(engine):
            self.data = self.data or prepare_instructions(self.root)
        self.dtype = cfg.model.weights_dtype(self.bf16)
        model, self.tokenizer = load_backbone(cfg.model.backbone, dtype=self.dtype, seed=cfg.seed)
        torch.manual_seed(cfg.seed)
        model = make_trainable(model, cfg.model, cfg.lora)
        adapters_in_float32(model, under_autocast=self.dtype == "bfloat16")
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        self.encoded = [encode(self.tokenizer, e.prompt, e.answer, cfg.model.max_length) for e in self.data.train]
        self.module = SFTModule(model)
        return self.module

    def fingerprint(self) -> dict[str, Any]:
        out = super().fingerprint()
        for section in ("align", "eval"):
            out["config"].pop(section, None)
        return out

    def num_items(self) -> int:
        return len(self.encoded)

    def collate(self, indices: list[int], epoch: int) -> dict[str, Any]:
        return collate([self.encoded[i] for i in indices], self.tokenizer.pad_token_id)

    def save(self, module: nn.Module, folder: Path, summary: dict[str, Any]) -> None:
        info = {"stage": "sft", "examples": len(self.encoded), "truncated": sum(e.truncated for e in self.encoded),
                "data": self.data.summary, "train": summary}
        write_coldstart(module.model, self.args.model, self.args.lora, folder, info, self.dtype)


def train_sft(cfg: ColdStartConfig, callbacks: Sequence[Callback] | None = None,
              data: InstructionSet | None = None) -> Path:
    """Instruction fine-tuning on the train questions (resumable); writes output_dir/sft/model."""
    recipe = SFTRecipe(cfg, data)
    Engine(recipe, callbacks).run()
    return Path(recipe.args.output_dir) / "model"


# ---- preference data -------------------------------------------------------------------------------------
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


def sft_folder(cfg: ColdStartConfig) -> Path:
    folder = Path(cfg.output_dir) / "sft" / "model"
    if not folder.is_dir():
        raise NotellmError(f"{folder} does not exist: run `notellm coldstart sft` with this config first")
    return folder


def build_preference_data(cfg: ColdStartConfig, engine: Engine | None = None) -> pa.Table:
    """Sample the SFT model, keep (chosen, rejected) pairs with the frozen SFT model's log-probabilities.

    The reference log-probability of a sampled answer is read from the sampling pass itself (raw logits of
    the frozen SFT model, so it equals a separate forward pass; tests check this). Cached in
    output_dir/preference.parquet and shared by the DPO, DPOP and IDPOP runs."""
    import pyarrow.parquet as pq

    out = Path(cfg.output_dir)
    path = out / "preference.parquet"
    if path.exists() and not cfg.align.rebuild_preference:
        return pq.read_table(path)
    acfg = cfg.align
    train, _, pref = read_instruction_set(out)
    examples = pref if acfg.prompts == "preference_users" else train
    if not examples:
        raise NotellmError("no prompts for preference data (data.preference_users is 0?)")
    bf16 = engine.bf16 if engine is not None else False
    model, tokenizer, mcfg = load_coldstart_model(sft_folder(cfg), bf16=bf16)
    torch.manual_seed(cfg.seed)
    start = time.time()
    phase = engine.phase("sampling preference pairs from the SFT model", len(examples), "prompts") if engine else None
    sampled = generate_answers(
        model, tokenizer, [e.prompt for e in examples], mcfg.max_length, sample=True, n=acfg.n_samples,
        temperature=acfg.temperature, top_p=acfg.top_p, max_new_tokens=acfg.max_new_tokens,
        batch_size=acfg.sample_batch_size, bf16=bf16, on_batch=phase.advance if phase else None,
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
                   temperature=acfg.temperature, seconds=round(time.time() - start, 1),
                   stats=preference_stats(table, acfg))
    write_json(summary, out / "preference.json")
    return table


def pair_weights(table: pa.Table, acfg: AlignConfig) -> list[float]:
    """mu_j per pair for IDPOP (eq. 13-14); M_min / M_max over every answer's error in D_A."""
    err_c = table.column("err_chosen").to_pylist()
    err_r = table.column("err_rejected").to_pylist()
    m_min, m_max = error_range(err_c + err_r)
    mu = idpop_mu(torch.tensor(err_c), torch.tensor(err_r), acfg.lam, acfg.alpha, acfg.delta, m_min, m_max)
    return mu.tolist()


def _one_token_apart(a: Sequence[int], b: Sequence[int]) -> bool:
    return len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1


def preference_stats(table: pa.Table, acfg: AlignConfig) -> dict[str, Any]:
    """What the alignment will learn from (written to preference.json): the error margin between rejected and
    chosen, how many pairs differ in a single token (one digit), how concentrated the chosen answers are on
    one text, and IDPOP's mu_j with the error range it is normalised by."""
    import numpy as np
    from collections import Counter

    err_c = np.asarray(table.column("err_chosen").to_pylist(), dtype=float)
    err_r = np.asarray(table.column("err_rejected").to_pylist(), dtype=float)
    margin = err_r - err_c
    finite = margin[np.isfinite(margin)]
    chosen, rejected = table.column("chosen").to_pylist(), table.column("rejected").to_pylist()
    ids = zip(table.column("chosen_ids").to_pylist(), table.column("rejected_ids").to_pylist())
    top_c = Counter(c.strip() for c in chosen).most_common(1)[0]
    top_r = Counter(r.strip() for r in rejected).most_common(1)[0]

    def q(values) -> list[float]:
        return [round(float(x), 4) for x in np.quantile(values, [0.0, 0.1, 0.5, 0.9, 1.0])] if len(values) else []

    out = dict(pairs=len(table), margin_quantiles_0_10_50_90_100=q(finite),
               rejected_unparseable=int((~np.isfinite(margin)).sum()),
               margin_below_0_1=float((finite < 0.1).mean()) if len(finite) else 0.0,
               one_token_apart=float(np.mean([_one_token_apart(a, b) for a, b in ids])),
               top_chosen=top_c[0], top_chosen_share=top_c[1] / len(chosen),
               top_rejected=top_r[0], top_rejected_share=top_r[1] / len(rejected))
    m_min, m_max = error_range(list(err_c) + list(err_r))
    mu = np.asarray(pair_weights(table, acfg))
    out.update(m_min=m_min, m_max=m_max, mu_quantiles_0_10_50_90_100=q(mu), mu_max_possible=acfg.lam / acfg.delta,
               mu_over_beta_median=float(np.median(mu)) / acfg.beta)
    return out


# ---- alignment -------------------------------------------------------------------------------------------
class AlignRecipe(Recipe):
    kind = "coldstart"

    def __init__(self, cfg: ColdStartConfig):
        self.root = cfg
        self.args = cfg.stage("align")

    def build(self, engine: Engine | None = None) -> nn.Module:
        self.bf16 = engine.bf16 if engine is not None else False
        with _main_first(engine):
            self.table = build_preference_data(self.root, engine)
        acfg = self.args.align
        mu = pair_weights(self.table, acfg) if acfg.loss == "idpop" else [0.0] * len(self.table)
        model, self.tokenizer, self.mcfg = load_coldstart_model(sft_folder(self.root), trainable=True, bf16=self.bf16)
        self.dtype = self.mcfg.weights_dtype(self.bf16)
        adapters_in_float32(model, under_autocast=self.dtype == "bfloat16")
        _disable_dropout(model)
        prompts = prompt_items(self.tokenizer, self.table.column("prompt").to_pylist(), self.mcfg.max_length,
                               acfg.max_new_tokens)
        self.chosen = [Encoded(p.prompt_ids, a) for p, a in zip(prompts, self.table.column("chosen_ids").to_pylist())]
        self.rejected = [Encoded(p.prompt_ids, a) for p, a in zip(prompts, self.table.column("rejected_ids").to_pylist())]
        self.ref_c = torch.tensor(self.table.column("ref_logp_chosen").to_pylist(), dtype=torch.float32)
        self.ref_r = torch.tensor(self.table.column("ref_logp_rejected").to_pylist(), dtype=torch.float32)
        self.mu = torch.tensor(mu, dtype=torch.float32)
        loss = PreferenceLoss(acfg.loss, beta=acfg.beta, lam=acfg.lam, placement=acfg.placement)
        self.module = AlignModule(model, loss)
        return self.module

    def fingerprint(self) -> dict[str, Any]:
        out = super().fingerprint()
        out["config"].pop("eval", None)
        out["preference_pairs"] = len(self.table)
        out["sft_model"] = _folder_digest(sft_folder(self.root))
        return out

    def num_items(self) -> int:
        return len(self.table)

    def collate(self, indices: list[int], epoch: int) -> dict[str, Any]:
        batch = collate([self.chosen[i] for i in indices] + [self.rejected[i] for i in indices],
                        self.tokenizer.pad_token_id)
        batch.update(ref_chosen=self.ref_c[indices], ref_rejected=self.ref_r[indices], mu=self.mu[indices])
        return batch

    def save(self, module: nn.Module, folder: Path, summary: dict[str, Any]) -> None:
        info = {"stage": "align", "align": asdict(self.args.align), "pairs": len(self.table),
                "mu_mean": float(self.mu.mean()), "parent": str(sft_folder(self.root)), "train": summary}
        write_coldstart(module.model, self.mcfg, self.args.lora, folder, info, self.dtype)


def _folder_digest(folder: Path) -> str:
    from notellm.fingerprint import file_digest

    return file_digest(folder)["sha256"]


def train_alignment(cfg: ColdStartConfig, callbacks: Sequence[Callback] | None = None) -> Path:
    """DPO / DPOP / IDPOP from the SFT weights (resumable); writes output_dir/align-<loss>/model."""
    recipe = AlignRecipe(cfg)
    Engine(recipe, callbacks).run()
    return Path(recipe.args.output_dir) / "model"


def evaluate(cfg: ColdStartConfig, models: Sequence[str] | None = None, log=None) -> dict[str, Any]:
    """`evaluation.coldstart.evaluate` with this config's folders and settings."""
    from notellm.device import resolve_bf16
    from notellm.evaluation.coldstart import evaluate as run

    kwargs = {"log": log} if log is not None else {}
    return run(cfg.output_dir, cfg.eval, cfg.data, models, bf16=resolve_bf16(str(cfg.bf16).lower(), cfg.device),
               **kwargs)
