"""Fast training of CMOW models: sparse gradients for the token tables, with the ``Trainer`` or a custom loop.

A CMOW model's parameters are almost all token tables (36.6M of 36.6M in the paper's configuration), yet one batch
touches only a few thousand rows. With dense gradients every step writes a zeroed gradient of the whole table and
runs Adam over every row; that dominates the step time (sparse steps are 3.6-4x faster for a batch of 32 SST-2
sentences on CPU: ``benchmarks/benchmark_training.py``, docs/benchmarks.md). ``sparse_token_tables`` switches the
tables to sparse gradients and ``LazyAdamW`` updates only the rows a batch touched, like ``torch.optim.SparseAdam``
but in one optimizer with the dense parameters, with decoupled weight decay and with gradient clipping that
understands sparse gradients.

Lazy updates are not AdamW's: a row a batch skips stays where it is instead of moving on its momentum. Where the
student step is a small part of the time (``cmow distill``, dominated by the teacher) that cost more quality per
step than it saved time, so there it is opt-in.

``CMOWTrainer`` is a ``Trainer`` that does all of this for a CMOW model, and is otherwise the stock ``Trainer``.
"""

import contextlib
import logging
import math
from collections.abc import Iterable, Iterator

import torch
from torch import nn
from transformers import Trainer

from .modeling_cmow import CMOWEncoder

logger = logging.getLogger(__name__)


def token_tables(model: nn.Module) -> list[nn.Embedding]:
    """The CMOW token tables (matrix and vector embeddings) of ``model``, in module order."""
    encoders = [module for module in model.modules() if isinstance(module, CMOWEncoder)]
    return [table for encoder in encoders for table in encoder.children() if isinstance(table, nn.Embedding)]


@contextlib.contextmanager
def sparse_token_tables(model: nn.Module) -> Iterator[list[nn.Embedding]]:
    """Give ``model``'s CMOW token tables sparse gradients inside the block; restore the previous setting after.

    Only optimizers that accept sparse gradients (``LazyAdamW``, ``torch.optim.SparseAdam``, SGD) can step them.
    """
    tables = token_tables(model)
    previous = [table.sparse for table in tables]
    for table in tables:
        table.sparse = True
    try:
        yield tables
    finally:
        for table, sparse in zip(tables, previous, strict=True):
            table.sparse = sparse


def total_grad_norm(parameters: Iterable[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all gradients together, sparse ones included (``clip_grad_norm_`` rejects sparse gradients)."""
    squares = [
        (p.grad.coalesce().values() if p.grad.is_sparse else p.grad).float().square().sum()
        for p in parameters
        if p.grad is not None
    ]
    return torch.stack(squares).sum().sqrt() if squares else torch.tensor(0.0)


def clip_grad_norm(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale all gradients (sparse or dense) so their joint 2-norm is at most ``max_norm``; return the norm before."""
    parameters = [p for p in parameters if p.grad is not None]
    for p in parameters:
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()  # duplicate indices would be counted twice below
    norm = total_grad_norm(parameters)
    scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for p in parameters:
        p.grad.mul_(scale)
    return norm


class LazyAdamW(torch.optim.Optimizer):
    """AdamW for dense and sparse gradients; a sparse gradient updates only its rows ("lazy" Adam).

    Dense gradients get exactly ``torch.optim.AdamW``'s update. For a sparse gradient (a token table with
    ``sparse=True``) only the rows present are updated: their moments, weight decay and step, with the bias correction
    of the parameter's step count, as ``torch.optim.SparseAdam`` does. Rows a batch did not touch stay as they are.

    Args:
        params: Parameters or parameter groups.
        lr: Learning rate.
        betas: Adam's moment decay rates.
        eps: Added to the denominator.
        weight_decay: Decoupled weight decay (AdamW); for sparse gradients applied to the touched rows only.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(
                f"LazyAdamW needs lr, eps, weight_decay >= 0 and betas in [0, 1); got lr={lr}, betas={betas}, "
                f"eps={eps}, weight_decay={weight_decay}."
            )
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step = state["step"].item()
                step_size = lr / (1 - beta1**step)
                root_correction = math.sqrt(1 - beta2**step)
                if p.grad.is_sparse:
                    self._sparse_update(p, state, lr, beta1, beta2, eps, decay, step_size, root_correction)
                    continue
                grad, exp_avg, exp_avg_sq = p.grad, state["exp_avg"], state["exp_avg_sq"]
                p.mul_(1 - lr * decay)
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denominator = (exp_avg_sq.sqrt() / root_correction).add_(eps)
                p.addcdiv_(exp_avg, denominator, value=-step_size)
        return loss

    @staticmethod
    def _sparse_update(p, state, lr, beta1, beta2, eps, decay, step_size, root_correction) -> None:
        grad = p.grad.coalesce()
        rows, values = grad.indices()[0], grad.values()  # (touched,), (touched, features)
        exp_avg = state["exp_avg"][rows].lerp_(values, 1 - beta1)
        exp_avg_sq = state["exp_avg_sq"][rows].mul_(beta2).addcmul_(values, values, value=1 - beta2)
        state["exp_avg"][rows] = exp_avg
        state["exp_avg_sq"][rows] = exp_avg_sq
        denominator = (exp_avg_sq.sqrt() / root_correction).add_(eps)
        p[rows] = p[rows].mul_(1 - lr * decay).addcdiv_(exp_avg, denominator, value=-step_size)


class CMOWTrainer(Trainer):
    """The ``Trainer`` with sparse token-table gradients and ``LazyAdamW`` for CMOW models.

    Everything else is the stock ``Trainer``. The optimizer takes ``learning_rate``, ``adam_beta1/2``,
    ``adam_epsilon`` and ``weight_decay`` from the ``TrainingArguments`` (its ``optim`` choice is not used), and
    ``max_grad_norm`` clips sparse and dense gradients together. Pass ``sparse_embeddings=False``, or your own
    ``optimizers=(optimizer, scheduler)``, for dense gradients and the stock optimizer.
    """

    def __init__(self, *args, sparse_embeddings: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.sparse_embeddings = sparse_embeddings and self.optimizer is None and bool(token_tables(self.model))

    def train(self, *args, **kwargs):
        if not self.sparse_embeddings:
            return super().train(*args, **kwargs)
        with sparse_token_tables(self.model):
            return super().train(*args, **kwargs)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if not self.sparse_embeddings or self.optimizer is not None:
            return super().create_optimizer(model)
        model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(model))
        groups = [
            {
                "params": [p for n, p in model.named_parameters() if p.requires_grad and (n in decay) == use_decay],
                "weight_decay": self.args.weight_decay if use_decay else 0.0,
            }
            for use_decay in (True, False)
        ]
        self.optimizer = LazyAdamW(
            [group for group in groups if group["params"]],
            lr=self.args.learning_rate,
            betas=(self.args.adam_beta1, self.args.adam_beta2),
            eps=self.args.adam_epsilon,
        )
        return self.optimizer

    # The stock Trainer measures and clips with ``clip_grad_norm_``, which fails on sparse gradients.
    def _clip_grad_norm(self, model):
        if not self.sparse_embeddings:
            return super()._clip_grad_norm(model)
        return clip_grad_norm(model.parameters(), self.args.max_grad_norm)

    def _get_grad_norm(self, model, grad_norm=None):
        if not self.sparse_embeddings:
            return super()._get_grad_norm(model, grad_norm=grad_norm)
        return (total_grad_norm(model.parameters()) if grad_norm is None else grad_norm).item()
