"""``finetune``: LoRA (peft) on a CogVLM checkpoint, a plain loop (no Trainer: CogVLM's batches carry per-row
image lists and token types that the Trainer's collation does not know), with gradient accumulation, an
evaluation split (loss and exact match of greedy answers), a progress bar and resumable checkpoints."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import get_scheduler

from coglens.engine import SamplingParams
from coglens.pipeline import Pipeline

from .checkpoints import checkpoint_dir, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import FinetuneConfig
from .data import Example, collate, encode_example, load_examples, media_for


@dataclass
class FinetuneResult:
    """``pipeline``: the loaded model with the trained adapter active (ask it directly); ``peft_model`` wraps it;
    ``eval``: the last evaluation (``loss``, ``exact_match``), None without an eval split."""

    pipeline: Pipeline
    peft_model: Any
    step: int
    train_loss: float | None
    eval: dict[str, float] | None


def finetune(config: FinetuneConfig) -> FinetuneResult:
    """Train a LoRA adapter as ``config`` says, resuming from the latest ``checkpoint-N`` in its output dir. The
    adapter ends up in ``config.output_dir`` (``adapter_config.json`` + ``adapter_model.safetensors``)."""
    train, held_out = _splits(config)
    pipe = Pipeline.load(config.model, dtype=config.dtype, device=config.device, quantize=config.quantize)
    peft_model = _with_lora(pipe.model, config)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.num_warmup_steps,
                              num_training_steps=config.max_steps)
    latest = latest_checkpoint(config.output_dir)
    step = 0 if latest is None else load_checkpoint(latest, peft_model, optimizer, scheduler, config.schedule)
    device = next(iter(params)).device
    evaluation, loss = None, None
    bar = tqdm(total=config.max_steps, initial=step, desc="finetune", unit="step", disable=not config.progress)
    started, seen = time.perf_counter(), 0
    while step < config.max_steps:
        peft_model.train()
        loss = 0.0
        for micro in range(config.grad_accum):
            rows = [train[i] for i in _batch(len(train), config, step * config.grad_accum + micro)]
            batch = _to(collate([_encode(row, pipe, config) for row in rows], _pad_id(pipe)), device)
            part = peft_model(**batch, use_cache=False).loss / config.grad_accum
            part.backward()
            loss += part.item()
            seen += len(rows)
        lr = optimizer.param_groups[0]["lr"]  # the rate this step trains at (the scheduler then sets the next)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{seen / (time.perf_counter() - started):.1f}")
        if step % config.save_every == 0 or step == config.max_steps:
            save_checkpoint(checkpoint_dir(config.output_dir, step), peft_model, optimizer, scheduler, step,
                            config.schedule)
        if held_out and config.eval_every and step % config.eval_every == 0 and step < config.max_steps:
            evaluation = evaluate(pipe, peft_model, held_out, config)
            bar.write(f"step {step}: eval loss {evaluation['loss']:.4f}, exact match {evaluation['exact_match']:.2%}")
    bar.close()
    peft_model.save_pretrained(config.output_dir)
    if held_out:
        evaluation = evaluate(pipe, peft_model, held_out, config)
    return FinetuneResult(pipe, peft_model, step, loss, evaluation)


def evaluate(pipe: Pipeline, peft_model: Any, examples: Sequence[Example], config: FinetuneConfig) -> dict[str, float]:
    """Mean loss over ``examples`` and the share whose greedy answer equals the expected one (stripped)."""
    peft_model.eval()
    device = next(p.device for p in peft_model.parameters())
    losses = []
    with torch.no_grad():
        for start in range(0, len(examples), config.batch_size):
            rows = [_encode(row, pipe, config) for row in examples[start:start + config.batch_size]]
            losses.append(peft_model(**_to(collate(rows, _pad_id(pipe)), device), use_cache=False).loss.item())
    answers = generate_answers(pipe, examples, config.template, config.max_new_tokens)
    right = sum(answer == row.answer.strip() for answer, row in zip(answers, examples, strict=True))
    return {"loss": sum(losses) / len(losses), "exact_match": right / len(examples)}


def generate_answers(pipe: Pipeline, examples: Sequence[Example], template: str | None,
                     max_new_tokens: int) -> list[str]:
    """Greedy answers through the pipeline's engine: the same path ``coglens ask`` takes."""
    params = SamplingParams.from_temperature(0.0, max_new_tokens=max_new_tokens)
    requests = [pipe.request(row.query, params=params, images=media_for(row, pipe.config, template),
                             history=row.history, template=template) for row in examples]
    return [result.text.strip() for result in pipe.engine.generate(requests)]


def _with_lora(model: Any, config: FinetuneConfig) -> Any:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    # non-reentrant checkpointing: the reentrant kind drops the gradients of LoRA weights in layers whose inputs
    # need none (the vision tower's, fed frozen pixels)
    checkpointing = {"use_reentrant": False}
    if config.quantize is not None:  # QLoRA: frozen quantized base, norms in fp32, input grads for checkpointing
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing,
                                                gradient_checkpointing_kwargs=checkpointing)
    elif config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
    torch.manual_seed(config.seed)  # LoRA's A matrices start random: the same seed, the same start
    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                      target_modules=config.target_pattern, bias="none")
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:  # peft's "Target modules ... not found" names the pattern; say what can be chosen
        raise ValueError(f"target_modules {config.target_modules}: {exc}") from exc


def _splits(config: FinetuneConfig) -> tuple[list[Example], list[Example]]:
    train = load_examples(config.train)
    if config.eval is not None:
        return train, load_examples(config.eval)
    held = math.floor(len(train) * config.eval_fraction)
    if not held:
        return train, []
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed)).tolist()
    return [train[i] for i in order[held:]], [train[i] for i in order[:held]]


def _batch(size: int, config: FinetuneConfig, micro_step: int) -> Iterator[int]:
    """The rows of micro-batch ``micro_step``: a fixed shuffle per epoch (seeded by seed and epoch), so the data
    order depends on the step alone and a resumed run sees the same rows an uninterrupted one would."""
    for position in range(micro_step * config.batch_size, (micro_step + 1) * config.batch_size):
        epoch, index = divmod(position, size)
        yield _epoch_order(size, config.seed, epoch)[index]


@lru_cache(maxsize=2)  # a batch spans at most two epochs
def _epoch_order(size: int, seed: int, epoch: int) -> list[int]:
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()


def _encode(example: Example, pipe: Pipeline, config: FinetuneConfig) -> dict[str, Any]:
    return encode_example(example, pipe.tokenizer, pipe.config, config.template,
                          train_on_history=config.train_on_history)


def _pad_id(pipe: Pipeline) -> int:
    tok = pipe.tokenizer
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    moved = {key: value.to(device) for key, value in batch.items() if isinstance(value, torch.Tensor)}
    moved["images"] = [[image.to(device) for image in row] for row in batch["images"]]
    return moved
