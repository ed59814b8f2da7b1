"""Build the same tiny NoteLLM training module in every process, for the multi-process equality tests."""

from __future__ import annotations

import torch

from helpers.toy import toy_notes
from notellm.models.notellm import NoteLLMConfig, build_notellm
from notellm.models.prompts import build_prompt
from notellm.losses import NoteLLMLoss
from notellm.models.lora import LoraConfig
from notellm.training.notellm import TrainModule, add_notellm_lora

N_PAIRS = 8
# note keys of the 16 rows (a0, b0, a1, b1, ...): some notes repeat, inside one process's half and across halves,
# so the duplicate masks must use the gathered keys
KEYS = torch.tensor([0, 1, 2, 3, 4, 5, 0, 6, 7, 8, 2, 9, 10, 1, 11, 12])


def make_module() -> TrainModule:
    model = build_notellm(NoteLLMConfig(backbone="tiny-qwen3", dim=16, max_length=64), seed=0)
    add_notellm_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0))
    torch.manual_seed(1)
    with torch.no_grad():  # non-zero B so that every LoRA matrix gets a gradient
        for name, p in model.lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return TrainModule(model, NoteLLMLoss(gen_weight=0.5), "notellm")


def prompts(first_pair: int, n_pairs: int):
    notes = toy_notes()
    out = []
    for k in range(first_pair, first_pair + n_pairs):
        a, b = notes[2 * k], notes[2 * k + 1]
        out += [build_prompt(a, "category"), build_prompt(b, "hashtag", tag_target=k)]
    return out


def loss_and_grads(module: TrainModule, first_pair: int, n_pairs: int):
    batch = module.model.encode_prompts(prompts(first_pair, n_pairs))
    batch["note_keys"] = KEYS[2 * first_pair: 2 * (first_pair + n_pairs)]
    out = module(**batch)
    module.zero_grad()
    out["loss"].backward()
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.requires_grad and p.grad is not None}
    return out["loss"].detach(), grads


def worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        module = make_module()
        per = N_PAIRS // world
        loss, grads = loss_and_grads(module, rank * per, per)
        for g in grads.values():  # what DDP does: average gradients over processes
            dist.all_reduce(g)
            g /= world
        dist.all_reduce(loss)
        if rank == 0:
            torch.save({"loss": loss / world, "grads": grads}, out_file)
    finally:
        dist.destroy_process_group()
