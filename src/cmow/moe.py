"""Turn a fine-tuned BERT classifier into a MoEBERT student (Zuo et al., NAACL 2022).

Two steps: ``ffn_importance`` scores every FFN neuron on task data, then ``moe_from_dense`` builds the student whose
experts are the ``shared_size`` most important neurons plus an even share of the rest, copied from the dense FFN.
Everything else (embeddings, attention, pooler, classifier) is copied unchanged.
"""

import logging
from collections.abc import Iterable

import torch
from torch import nn

from .configuration_moebert import MoEBertConfig
from .modeling_moebert import MoEBertForSequenceClassification, MoEFeedForward

logger = logging.getLogger(__name__)

# Keys of a BERT config that describe the teacher's class or origin, not the network the student copies.
_TEACHER_ONLY_KEYS = ("model_type", "architectures", "auto_map", "transformers_version", "_name_or_path")


def _ffn_weights(model: nn.Module) -> list[tuple[nn.Parameter, nn.Parameter]]:
    """``(intermediate.dense.weight, output.dense.weight)`` of every layer of a BERT-like ``model``."""
    return [(layer.intermediate.dense.weight, layer.output.dense.weight) for layer in model.base_model.encoder.layer]


def ffn_importance(model: nn.Module, batches: Iterable[dict]) -> list[torch.Tensor]:
    r"""First-order Taylor importance of every FFN neuron of a dense BERT-like model, as MoEBERT computes it.

    For neuron ``j`` of a layer, with ``W1 = intermediate.dense.weight`` (row ``j`` feeds the neuron) and
    ``W2 = output.dense.weight`` (column ``j`` reads it), the score sums over batches ``b`` the first-order estimate
    of how much the loss changes when the neuron is removed:

        I_j = \sum_b | \sum_k W1[j, k] dL_b/dW1[j, k] + \sum_i W2[i, j] dL_b/dW2[i, j] |

    MoEBERT takes one example per term (``reduction="none"``); here a term is a batch's mean loss, so batches of
    one example give MoEBERT's scores. The model runs in eval mode (no dropout), as in MoEBERT's evaluation loop.
    Gradients come from ``torch.autograd.grad``, so the parameters' ``.grad`` are untouched; ``requires_grad`` and
    the train/eval mode are restored.

    Args:
        model: A BERT-like model whose layers are ``model.base_model.encoder.layer[i]`` with ``intermediate.dense``
            and ``output.dense``, and whose output has a ``.loss`` when given labels.
        batches: Dicts of tensors for ``model(**batch)``, including ``labels``; moved to the model's device.

    Returns:
        One ``(intermediate_size,)`` float32 tensor of scores per layer.
    """
    weights = _ffn_weights(model)
    flat = [weight for pair in weights for weight in pair]  # [W1 of layer 0, W2 of layer 0, W1 of layer 1, ...]
    scores = [torch.zeros(w1.shape[0], device=w1.device) for w1, _ in weights]
    device = flat[0].device
    was_training, requires_grad = model.training, [weight.requires_grad for weight in flat]
    model.eval()
    seen = 0
    try:
        for weight in flat:
            weight.requires_grad_(True)
        for batch in batches:
            batch = {key: value.to(device) if torch.is_tensor(value) else value for key, value in batch.items()}
            with torch.enable_grad():
                loss = model(**batch).loss
            if loss is None:
                raise ValueError("`model(**batch)` returned no loss: the batches must include `labels`.")
            gradients = torch.autograd.grad(loss, flat)
            with torch.no_grad():
                for score, (w1, w2), g1, g2 in zip(scores, weights, gradients[0::2], gradients[1::2], strict=True):
                    score += ((w1 * g1).sum(dim=1) + (w2 * g2).sum(dim=0)).abs().float()  # (intermediate,)
            seen += 1
    finally:
        for weight, flag in zip(flat, requires_grad, strict=True):
            weight.requires_grad_(flag)
        model.train(was_training)
    if seen == 0:
        raise ValueError("`batches` is empty: pass at least one labelled batch to score the neurons on.")
    logger.info("Scored the FFN neurons of %d layers on %d batches.", len(scores), seen)
    return scores


def expert_neurons(importance: torch.Tensor, num_experts: int, expert_size: int, shared_size: int) -> torch.Tensor:
    """The dense FFN neurons of each expert, as MoEBERT's ``_split_importance``.

    Neurons are ranked by importance; the top ``shared_size`` are in every expert, and expert ``i`` adds
    ``remaining[i::num_experts]`` of the rest (so the experts' unique neurons are disjoint and each expert gets a
    similar share of important ones), cut to ``expert_size`` neurons in total.

    Args:
        importance: ``(intermediate_size,)`` neuron scores.

    Returns:
        ``(num_experts, expert_size)`` long tensor: the shared neurons in importance order, then the expert's own.
    """
    ranked = importance.argsort(descending=True, stable=True)  # (intermediate,)
    shared, remaining = ranked[:shared_size], ranked[shared_size:]
    neurons = [torch.cat([shared, remaining[i::num_experts]])[:expert_size] for i in range(num_experts)]
    if any(len(expert) < expert_size for expert in neurons):
        raise ValueError(
            f"{num_experts} experts of {expert_size} neurons sharing {shared_size} do not fit in {len(ranked)} "
            "neurons: lower `expert_size` or `num_experts`, or raise `shared_size`."
        )
    return torch.stack(neurons)


@torch.no_grad()
def _copy_experts(ffn: MoEFeedForward, dense_layer: nn.Module, neurons: torch.Tensor) -> None:
    """Fill ``ffn``'s experts with the dense layer's FFN rows (``W1``, ``b1``) and columns (``W2``) of ``neurons``."""
    intermediate, output = dense_layer.intermediate.dense, dense_layer.output.dense
    neurons = neurons.to(intermediate.weight.device)  # (experts, size)
    ffn.fc1_weight.copy_(intermediate.weight[neurons])  # (experts, size, hidden)
    ffn.fc1_bias.copy_(intermediate.bias[neurons])  # (experts, size)
    ffn.fc2_weight.copy_(output.weight[:, neurons].permute(1, 0, 2))  # (experts, hidden, size)
    ffn.fc2_bias.copy_(output.bias)
    ffn.LayerNorm.load_state_dict(dense_layer.output.LayerNorm.state_dict())


def moe_from_dense(
    model: nn.Module,
    importance: list[torch.Tensor],
    num_experts: int,
    expert_size: int,
    shared_size: int,
    routing: str = "hash",
    hash_seed: int = 0,
) -> MoEBertForSequenceClassification:
    """A MoEBERT student that starts as ``model`` with each FFN split into experts by neuron importance.

    Embeddings, attention, pooler and classifier are copied exactly; each layer's experts get the dense FFN's
    weights of ``expert_neurons(importance[layer], ...)``, and its LayerNorm. With ``"gate"`` routing the gates start
    random (BERT's initialisation). With ``shared_size == expert_size == intermediate_size`` every expert is the whole
    dense FFN, so hash routing computes exactly the dense model's function.

    Args:
        model: A ``BertForSequenceClassification`` (``model_type`` "bert").
        importance: One ``(intermediate_size,)`` score tensor per layer, e.g. from ``ffn_importance``.
        num_experts: Experts per layer.
        expert_size: Neurons per expert, shared ones included.
        shared_size: Most important neurons held by every expert.
        routing: ``"hash"`` or ``"gate"`` (see ``MoEBertConfig``).
        hash_seed: Seed of the token-to-expert table of hash routing.

    Returns:
        The student, on ``model``'s device and dtype, in ``model``'s train/eval mode.
    """
    if model.config.model_type != "bert" or not isinstance(getattr(model, "classifier", None), nn.Linear):
        raise ValueError(
            f"moe_from_dense converts a BertForSequenceClassification (MoEBERT reuses BERT's modules); got a "
            f"{type(model).__name__} of model_type {model.config.model_type!r}."
        )
    settings = {key: value for key, value in model.config.to_dict().items() if key not in _TEACHER_ONLY_KEYS}
    config = MoEBertConfig(
        num_experts=num_experts,
        expert_size=expert_size,
        shared_size=shared_size,
        routing=routing,
        hash_seed=hash_seed,
        **settings,
    )
    if len(importance) != config.num_hidden_layers:
        raise ValueError(
            f"`importance` must hold one tensor per layer ({config.num_hidden_layers}); got {len(importance)}."
        )
    parameter = next(model.parameters())
    student = MoEBertForSequenceClassification(config).to(device=parameter.device, dtype=parameter.dtype)
    dense = model.bert
    student.bert.embeddings.load_state_dict(dense.embeddings.state_dict())
    student.bert.pooler.load_state_dict(dense.pooler.state_dict())
    student.classifier.load_state_dict(model.classifier.state_dict())
    for scores, dense_layer, moe_layer in zip(
        importance, dense.encoder.layer, student.bert.encoder.layer, strict=True
    ):
        if scores.shape != (config.intermediate_size,):
            raise ValueError(
                f"Each importance tensor must be ({config.intermediate_size},); got {tuple(scores.shape)}."
            )
        moe_layer.attention.load_state_dict(dense_layer.attention.state_dict())
        neurons = expert_neurons(scores, num_experts, expert_size, shared_size)
        _copy_experts(moe_layer.ffn, dense_layer, neurons)
    return student.train(model.training)


def active_parameters(model: nn.Module) -> int:
    """The parameters one token uses: all of ``model``'s but, in each mixture-of-experts FFN, one expert's only.

    A token goes through one expert per layer, so each ``MoEFeedForward`` counts one expert's ``fc1_weight``,
    ``fc1_bias`` and ``fc2_weight`` instead of all ``num_experts``; everything else (embeddings, attention, gates,
    the shared output bias, LayerNorms, head) counts once, as in ``num_parameters``.
    """
    active = sum(parameter.numel() for parameter in model.parameters())
    for ffn in (module for module in model.modules() if isinstance(module, MoEFeedForward)):
        expert = sum(stacked[0].numel() for stacked in (ffn.fc1_weight, ffn.fc1_bias, ffn.fc2_weight))
        active -= (ffn.num_experts - 1) * expert
    return active


__all__ = ["active_parameters", "expert_neurons", "ffn_importance", "moe_from_dense"]
