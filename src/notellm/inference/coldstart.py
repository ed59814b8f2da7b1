"""Cold-start answers (MultiSmpLLM): greedy or sampled answers of a cold-start model to instruction prompts,
with the log-probability of every answer under the model; and answer log-probabilities of given tokens (what
SFT and preference alignment train on)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from notellm.data.coldstart import IGNORE, Encoded, collate, encode
from notellm.device import autocast
from notellm.models.backbone import contiguous_head_input


def _on(model, batch: dict[str, Any]) -> dict[str, Any]:
    device = next(model.parameters()).device
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


def answer_token_logprobs(model, batch: dict[str, Any], bf16: bool = False):
    """(log-probabilities of the answer tokens [B, n_keep-1], mask [B, n_keep-1]); logits are computed only
    for the last positions (the LM head over a 262k vocabulary dominates the cost otherwise)."""
    import torch

    batch = _on(model, batch)
    n_keep = batch["n_keep"]
    with autocast(batch["input_ids"].device.type, bf16):
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    position_ids=batch["position_ids"], logits_to_keep=n_keep, use_cache=False)
    logits = out.logits[:, :-1].float()               # position t predicts token t+1
    targets = batch["labels"][:, -(n_keep - 1):]
    mask = targets != IGNORE
    logps = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return logps * mask, mask


def sequence_logprobs(model, batch: dict[str, Any], bf16: bool = False):
    """Summed answer log-probability per sequence, log pi(y|x)."""
    logps, _ = answer_token_logprobs(model, batch, bf16)
    return logps.sum(-1)


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
    bf16: bool = False, with_logprobs: bool = True, on_batch: Callable[[int], None] | None = None,
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
        with torch.no_grad(), autocast(batch["input_ids"].device.type, bf16):
            out = model.generate(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                max_new_tokens=max_new_tokens, num_return_sequences=n, return_dict_in_generate=True,
                output_logits=with_logprobs, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                **kwargs,
            )
        ids, logps = _sampled_logps(out, batch["input_ids"].shape[1], tokenizer.eos_token_id)
        samples = [Sample(tokenizer.decode(i, skip_special_tokens=True), i, lp) for i, lp in zip(ids, logps)]
        answers.extend(samples[i:i + n] for i in range(0, len(samples), n))
        if on_batch:
            on_batch(len(items[start:start + batch_size]))
    return answers


def reference_logprobs(model, tokenizer, prompts: Sequence[str], answer_ids: Sequence[Sequence[int]],
                       max_length: int, max_new_tokens: int, batch_size: int, bf16: bool = False) -> list[float]:
    """log pi(y|x) of given answer tokens, prompts encoded as for generation."""
    import torch

    model.eval()
    items = [Encoded(p.prompt_ids, list(a)) for p, a in
             zip(prompt_items(tokenizer, prompts, max_length, max_new_tokens), answer_ids)]
    out: list[float] = []
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            batch = collate(items[start:start + batch_size], tokenizer.pad_token_id)
            out.extend(sequence_logprobs(model, batch, bf16).tolist())
    return out


class ColdStartPredictor:
    """A trained cold-start folder as `.predict(prompts) -> list[float | None]` (None: the answer was not a
    number). The prompt is built by `data.coldstart.PromptWriter` from the author's past posts."""

    def __init__(self, model_dir: str, bf16: bool | None = None, max_new_tokens: int = 8, batch_size: int = 8):
        from notellm.device import bf16_supported
        from notellm.models.coldstart import load_coldstart_model

        self.bf16 = bf16_supported() if bf16 is None else bf16
        self.model, self.tokenizer, self.config = load_coldstart_model(model_dir, bf16=self.bf16)
        self.model_dir, self.max_new_tokens, self.batch_size = str(model_dir), max_new_tokens, batch_size

    def answers(self, prompts: Sequence[str]) -> list[str]:
        out = generate_answers(self.model, self.tokenizer, prompts, self.config.max_length,
                               max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, bf16=self.bf16,
                               with_logprobs=False)
        return [a[0].text for a in out]

    def predict(self, prompts: Sequence[str]) -> list[float | None]:
        from notellm.evaluation.numbers import parse_number

        return [parse_number(a) for a in self.answers(prompts)]
