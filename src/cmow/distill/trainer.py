"""The distillation loop on accelerate: ``distill_from_model`` takes ready objects and trains the student."""

import contextlib
import importlib.util
import logging
import math
import os
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import DataCollatorForLanguageModeling, PreTrainedModel, PreTrainedTokenizerBase, get_scheduler

from ..hub_cards import public_name
from ..modeling_cmow import CMOWPreTrainedModel
from ..training import LazyAdamW, clip_grad_norm, sparse_token_tables
from .augmentation import add_word_order_copies
from .cache import TeacherCache, fingerprint
from .checkpoints import latest_checkpoint, prepare_output_dir, resume_latest, run_settings, save_checkpoint
from .config import DistillationConfig
from .corpus import Corpus, first_text, text_batches, texts_of
from .initialization import initialize_student
from .launch import warn_if_fewer_processes
from .objectives import DistillationModule
from .output import save_student
from .student_tokenizer import aligned_targets
from .teacher import TeacherPooling, check_compatibility, check_sequence_length, resolve_objective, teacher_targets

logger = logging.getLogger(__name__)


class Progress:
    """Where the run stands; saved in every checkpoint so a resumed run skips the batches it already consumed."""

    def __init__(self):
        self.step = self.epoch = self.batches_in_epoch = 0

    def state_dict(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.epoch, self.batches_in_epoch = state["step"], state["epoch"], state["batches_in_epoch"]


def _finite_everywhere(accelerator: Accelerator, value: float) -> bool:
    """Whether ``value`` is finite on every process: all of them must stop together, or DDP would hang."""
    if accelerator.num_processes == 1:
        return math.isfinite(value)
    flag = torch.tensor([math.isfinite(value)], dtype=torch.long, device=accelerator.device)
    return accelerator.gather(flag).min().item() == 1


class TrainingDiverged(FloatingPointError):
    """The loss or the weights became NaN or infinite: training stopped without saving them."""


def _stop_diverged(what: str, step: int, output_dir: Path) -> TrainingDiverged:
    kept = latest_checkpoint(output_dir)
    kept = f"The last good checkpoint, {kept}, is kept" if kept else "No checkpoint was saved before"
    return TrainingDiverged(
        f"{what} at step {step}: training diverged (a learning rate too high, or non-finite weights or inputs) and "
        f"was stopped without saving. {kept}; rerun with a lower --learning-rate and --overwrite-output-dir."
    )


def _check_finite_weights(module: torch.nn.Module, step: int, output_dir: Path) -> None:
    """Raise ``TrainingDiverged`` rather than save non-finite weights."""
    bad = [name for name, parameter in module.named_parameters() if not bool(torch.isfinite(parameter).all())]
    if bad:
        raise _stop_diverged(f"Non-finite weights in {', '.join(bad[:3])}", step, output_dir)


def _tracker(report_to: str) -> str | None:
    if report_to == "none" or (report_to == "auto" and importlib.util.find_spec("tensorboard") is None):
        return None
    return "tensorboard"


def _collate(texts: list[str], tokenizer, collator, config: DistillationConfig, offsets: bool = False) -> dict:
    """Tokenize a batch; the MLM collator pads and masks (80/10/10), otherwise the tokenizer pads.

    ``offsets`` adds the tokens' character ``offset_mapping`` (to align two tokenizations).
    """
    if collator is None:
        return dict(
            tokenizer(
                texts,
                truncation=True,
                max_length=config.max_seq_length,
                padding=True,
                return_tensors="pt",
                return_offsets_mapping=offsets,
            )
        )
    encoded = tokenizer(texts, truncation=True, max_length=config.max_seq_length, return_special_tokens_mask=True)
    features = [dict(zip(encoded, values, strict=True)) for values in zip(*encoded.values(), strict=True)]
    return dict(collator(features))


def _format_metrics(metrics: dict) -> str:
    """``loss 0.4210 (sentence 0.3, token 0.1), 812 texts/s, lr 1.0e-03`` for the log."""
    terms = ", ".join(f"{name[5:]} {value:.4f}" for name, value in metrics.items() if name.startswith("loss_"))
    return (
        f"loss {metrics['loss']:.4f}"
        + (f" ({terms})" if terms else "")
        + f", {metrics['texts_per_second']:.0f} texts/s, lr {metrics['learning_rate']:.1e}"
    )


def distill_from_model(
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    student: CMOWPreTrainedModel,
    dataset: Corpus,
    output_dir: str | os.PathLike,
    config: DistillationConfig | None = None,
    *,
    teacher_pooling: TeacherPooling | None = None,
    teacher_name: str | None = None,
    corpus_name: str | None = None,
    corpus_fingerprint: str | None = None,
    resume: bool = False,
    overwrite_output_dir: bool = False,
    push_to_hub: str | None = None,
    student_tokenizer: PreTrainedTokenizerBase | None = None,
) -> CMOWPreTrainedModel:
    """Distil ``teacher`` into ``student`` on ``dataset`` and save the student to ``output_dir``.

    Args:
        teacher: A transformers model; a ``*ForMaskedLM`` model gets the MLM objective, any other the hidden-state
            objective (see ``DistillationConfig``). It is frozen, kept in eval mode and never wrapped for DDP.
        tokenizer: The teacher's tokenizer; the student uses it too unless ``student_tokenizer`` is given.
        student: ``CMOWForMaskedLM`` for the MLM objective, ``CMOWModel`` for the hidden-state one, with the
            ``vocab_size`` and ``pad_token_id`` of its tokenizer.
        dataset: A ``datasets`` ``Dataset`` or ``IterableDataset`` with a ``config.text_column`` column.
        output_dir: Where the student, its tokenizer, its card and the checkpoints go.
        config: The settings; defaults to ``DistillationConfig()``.
        teacher_pooling: The teacher's sentence pooling (hidden-state objective); defaults to mean pooling.
        teacher_name: Recorded as ``config.teacher`` of the saved student.
        corpus_name: Names the corpus in the saved config and card (a name, not a local path: see
            ``cmow.hub_cards.public_name``).
        corpus_fingerprint: Identifies the corpus's contents in the teacher cache's key (e.g.
            ``cmow.distill.corpus.corpus_fingerprint``); defaults to the dataset's ``datasets`` fingerprint, else
            ``corpus_name``.
        resume: Continue from the newest complete checkpoint in ``output_dir/checkpoints``, which must have been
            written with the same settings (see ``cmow.distill.checkpoints``).
        overwrite_output_dir: Start afresh in an ``output_dir`` that holds an earlier run (its checkpoints are
            deleted); without it such a folder is refused.
        push_to_hub: A Hub repository id to upload the saved student to.
        student_tokenizer: The student's own tokenizer (e.g. ``train_student_tokenizer``), saved with it; each model
            tokenizes every text its own way (hidden-state objective only).

    Returns:
        The trained student (unwrapped).

    Raises:
        ValueError: if teacher, tokenizer, student and corpus do not fit together (before any training).
        FileExistsError: if ``output_dir`` holds an earlier run and neither ``resume`` nor ``overwrite_output_dir``.
        PermissionError: if ``output_dir`` is not writable (before any training).
        TrainingDiverged: if the loss or the weights become non-finite; the last good checkpoint is kept.
    """
    config = config or DistillationConfig()
    teacher_pooling = teacher_pooling or TeacherPooling()
    output_dir = Path(output_dir)
    objective = resolve_objective(config.objective, teacher)
    check_compatibility(teacher, tokenizer, student, objective, student_tokenizer)
    if student_tokenizer is not None and config.alpha_token and not student_tokenizer.is_fast:
        raise ValueError("The per-token term aligns tokenizations by character offsets: use a fast student tokenizer.")
    check_sequence_length(teacher, tokenizer, config.max_seq_length)
    first_text(dataset, config.text_column)
    if config.cache_dir and objective != "hidden":
        raise ValueError("The teacher cache works with the 'hidden' objective only: MLM targets change with masking.")
    teacher_name = public_name(teacher_name or teacher.config.name_or_path)
    corpus_id = corpus_fingerprint or getattr(dataset, "_fingerprint", None) or corpus_name
    if config.cache_dir and corpus_id is None:
        raise ValueError("The teacher cache needs a corpus_name (the corpus's identity) to key the cache.")

    # Set-up: accelerator, output folder, seeded module and optimizer, a frozen teacher on the same device.
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision, log_with=_tracker(config.report_to), project_dir=str(output_dir)
    )
    warn_if_fewer_processes(accelerator.num_processes, accelerator.device)
    prepare_output_dir(
        output_dir, resume=resume, overwrite=overwrite_output_dir, main_process=accelerator.is_main_process
    )
    accelerator.wait_for_everyone()
    run = run_settings(config, teacher, teacher_name, student, corpus_id, accelerator.num_processes, student_tokenizer)
    set_seed(config.seed)
    if config.init == "static" and not resume:
        initialize_student(
            student,
            teacher,
            student_tokenizer or tokenizer,
            texts_of(dataset, config.text_column),
            weighting=config.init_weighting,
            sif_coefficient=config.init_sif_coefficient,
            count_texts=config.init_count_texts,
            teacher_tokenizer=tokenizer if student_tokenizer is not None else None,
        )
    module = DistillationModule(student, objective, config, getattr(teacher.config, "hidden_size", 0))
    # Sparse token-table gradients (see cmow.training) with LazyAdamW on request: one process only, as sparse
    # all-reduce is not portable. Otherwise torch's fused AdamW: the update of the 37M table parameters was the largest
    # part of a step with cached teacher targets (0.7-1.0 s with LazyAdamW's dense path vs 0.3-0.5 s fused, 1 thread).
    sparse = config.sparse_embeddings and accelerator.num_processes == 1
    if config.sparse_embeddings and not sparse:
        logger.warning("`sparse_embeddings` needs a single process; training with dense gradients.")
    sparse_mode = contextlib.ExitStack()  # closed before saving: the student is saved as it came
    sparse_tables = sparse_mode.enter_context(sparse_token_tables(student)) if sparse else []
    optimizer = (
        LazyAdamW(module.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        if sparse
        else torch.optim.AdamW(
            module.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay, fused=True
        )
    )
    scheduler = get_scheduler(
        "linear" if config.max_steps else "constant_with_warmup",
        optimizer,
        num_warmup_steps=config.warmup_steps,
        num_training_steps=config.max_steps,
    )
    module, optimizer = accelerator.prepare(module, optimizer)
    progress = Progress()
    accelerator.register_for_checkpointing(scheduler, progress)
    teacher.requires_grad_(False).eval().to(accelerator.device)
    collator = (
        DataCollatorForLanguageModeling(tokenizer, mlm_probability=config.mlm_probability)
        if objective == "mlm"
        else None
    )
    cache = None
    if config.cache_dir:
        settings = {
            **{k: getattr(config, k) for k in ("max_seq_length", "batch_size", "seed", "shuffle_buffer_size")},
            "text_column": config.text_column,
            "world_size": accelerator.num_processes,
            "pooling": teacher_pooling,
            "token_states": bool(config.alpha_token),
            "order_augmentation": config.order_augmentation,
        }
        cache = TeacherCache(
            config.cache_dir, fingerprint(teacher, tokenizer, corpus_id, settings), accelerator.process_index
        )
    if resume:
        checkpoint = resume_latest(accelerator, output_dir, run)
        logger.info("Resumed from %s at step %d", checkpoint, progress.step)
    logger.info(
        "Distilling (%s objective) on %d process(es), %s", objective, accelerator.num_processes, accelerator.device
    )
    accelerator.init_trackers("cmow-distill", config={k: v for k, v in config.to_dict().items() if v is not None})

    total = min(config.max_steps or float("inf"), config.stop_at_step or float("inf"))
    bar = tqdm(
        total=None if total == float("inf") else total,
        initial=progress.step,
        disable=not accelerator.is_local_main_process,
        desc=f"distilling ({objective})",
        unit="step",
    )
    window = {"loss": 0.0, "texts": 0, "micro": 0, "start": time.perf_counter()}
    accumulation = config.gradient_accumulation_steps
    micro = 0
    done = progress.step >= total
    module.train()
    while not done and progress.epoch < config.num_epochs:
        stream = text_batches(
            dataset,
            text_column=config.text_column,
            batch_size=config.batch_size,
            rank=accelerator.process_index,
            world_size=accelerator.num_processes,
            shuffle_buffer_size=config.shuffle_buffer_size,
            seed=config.seed,
            epoch=0 if cache else progress.epoch,
        )
        index = -1
        while not done:
            # Fetch: every process needs a batch, else the epoch ends for all of them (DDP must stay in step).
            texts = next(stream, None)
            index += 1
            if accelerator.num_processes > 1:
                flag = torch.tensor([texts is not None], dtype=torch.long, device=accelerator.device)
                if accelerator.gather(flag).min().item() == 0:
                    texts = None
            if texts is None:
                break
            if index < progress.batches_in_epoch:  # consumed before the checkpoint we resumed from
                continue
            texts, originals = add_word_order_copies(texts, config.order_augmentation, config.seed, index)
            align = student_tokenizer is not None and bool(config.alpha_token)
            batch = _collate(texts, tokenizer, collator, config, align)
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            student_batch = batch  # the student's own tokenization when it has its own vocabulary
            if student_tokenizer is not None:
                student_batch = _collate(texts, student_tokenizer, None, config, align)
                student_batch = {k: v.to(accelerator.device) for k, v in student_batch.items()}
            if originals:  # rows of the texts the word-swapped copies (the last rows) were made from
                student_batch["copy_of"] = torch.tensor(originals, dtype=torch.long, device=accelerator.device)

            # Teacher targets, from the cache when it has them.
            targets = cache.load(index, accelerator.device) if cache else None
            if targets is None:
                targets = teacher_targets(teacher, batch, objective, teacher_pooling, bool(config.alpha_token))
                if cache:
                    cache.save(index, targets)
                    targets = {name: t.half().float() for name, t in targets.items()}  # what a cache read gives
            if align:
                targets = aligned_targets(targets, batch, student_batch)

            # Forward and backward; gradients are synchronised only on the last micro-batch of a step.
            micro += 1
            progress.batches_in_epoch += 1
            sync = micro % accumulation == 0
            with contextlib.nullcontext() if sync else accelerator.no_sync(module):
                with accelerator.autocast():
                    terms = module(student_batch, targets)
                loss = terms["loss"].item()
                if not _finite_everywhere(accelerator, loss):
                    raise _stop_diverged(f"The loss is not finite ({loss} here)", progress.step + 1, output_dir)
                accelerator.backward(terms["loss"] / accumulation)
            window["loss"] += loss
            window["texts"] += len(texts) * accelerator.num_processes
            window["micro"] += 1
            if not sync:
                continue

            # Optimizer step, then log and checkpoint.
            if config.max_grad_norm and sparse_tables:
                accelerator.unscale_gradients()  # a no-op unless fp16 scales the loss
                clip_grad_norm(module.parameters(), config.max_grad_norm)
            elif config.max_grad_norm:
                accelerator.clip_grad_norm_(module.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            progress.step += 1
            bar.update(1)
            if progress.step % config.logging_steps == 0 or progress.step == total:
                elapsed = time.perf_counter() - window["start"]
                metrics = {
                    "loss": window["loss"] / window["micro"],
                    "texts_per_second": window["texts"] / elapsed,
                    "learning_rate": scheduler.get_last_lr()[0],
                    **{f"loss_{name}": value.item() for name, value in terms.items() if name != "loss"},
                }
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", texts_s=f"{metrics['texts_per_second']:.0f}")
                accelerator.log(metrics, step=progress.step)
                if accelerator.is_main_process:  # a log file gets the losses too, not only the progress bar
                    logger.info("step %d: %s", progress.step, _format_metrics(metrics))
                window = {"loss": 0.0, "texts": 0, "micro": 0, "start": time.perf_counter()}
            done = progress.step >= total
            if (config.save_steps and progress.step % config.save_steps == 0) or progress.step == config.stop_at_step:
                _check_finite_weights(module, progress.step, output_dir)
                save_checkpoint(accelerator, output_dir, progress.step, config.save_total_limit, run)
        if not done:
            progress.epoch += 1
            progress.batches_in_epoch = 0
    bar.close()
    if progress.step == 0:
        raise ValueError(
            f"The corpus is too small for one optimizer step of {config.batch_size * accumulation} texts per process."
        )
    if cache:
        logger.info("Teacher cache %s: %d hits, %d misses", cache.folder, cache.hits, cache.misses)

    # Save: the student with its pooler (the per-token projection was training-only), on the main process.
    accelerator.wait_for_everyone()
    student = accelerator.unwrap_model(module).student
    sparse_mode.close()
    _check_finite_weights(student, progress.step, output_dir)
    if progress.step != config.stop_at_step and accelerator.is_main_process:
        save_student(
            student,
            student_tokenizer or tokenizer,
            output_dir,
            teacher=teacher_name,
            objective=objective,
            config=config,
            steps=progress.step,
            corpus=corpus_name,
            push_to_hub=push_to_hub,
        )
    accelerator.wait_for_everyone()
    accelerator.end_training()  # closes the trackers and the process group
    return student
