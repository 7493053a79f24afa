"""MoEBERT: BERT whose feed-forward networks are mixtures of experts, one expert per token (Zuo et al., NAACL 2022).

A layer is BERT's self-attention followed by ``MoEFeedForward``: each position goes to one of ``num_experts`` experts,
two-layer FFNs of ``expert_size`` neurons, then dropout, the residual and LayerNorm as in BERT. The expert of a
position comes from a fixed table of its token id (``"hash"`` routing, looked up once per forward in ``MoEBertModel``)
or from a learned gate on its hidden state (``"gate"``). Embeddings, attention and pooler are transformers' BERT
modules, under BERT's names, so a fine-tuned BERT converts by copying (``cmow.moe.moe_from_dense``).

This file is shipped as remote code next to saved checkpoints: it imports only torch, transformers and its config.
"""

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.loss.loss_utils import ForSequenceClassificationLoss
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutputWithPooling, SequenceClassifierOutput
from transformers.models.bert.modeling_bert import BertAttention, BertEmbeddings, BertPooler, BertPreTrainedModel

from .configuration_moebert import MoEBertConfig


def hash_routes(vocab_size: int, num_experts: int, seed: int) -> torch.Tensor:
    """The expert of every token id: a random permutation of the vocabulary dealt out evenly over the experts.

    Deterministic in ``seed`` (a CPU ``torch.Generator``), so every process builds the same table; expert counts
    over the vocabulary differ by at most one.

    Returns:
        ``(vocab_size,)`` long tensor of expert indices.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    permutation = torch.randperm(vocab_size, generator=generator, device="cpu")  # (vocab,)
    routes = torch.empty(vocab_size, dtype=torch.long, device="cpu")
    routes[permutation] = torch.arange(vocab_size, device="cpu") % num_experts
    return routes


class HashRouter(nn.Module):
    """Token id to expert index, through the persistent table ``expert_of_token`` (saved with the weights)."""

    def __init__(self, config: MoEBertConfig):
        super().__init__()
        self.register_buffer("expert_of_token", torch.zeros(config.vocab_size, dtype=torch.long), persistent=True)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.expert_of_token[input_ids]  # (batch, seq)


class MoEFeedForward(nn.Module):
    """BERT's FFN block as ``num_experts`` experts: ``LayerNorm(x + dropout(scale * expert(x)))``, one expert a token.

    Expert ``e`` computes ``fc2_weight[e] @ act(fc1_weight[e] @ x + fc1_bias[e]) + fc2_bias``; the output bias is
    shared, as all experts are cut from one dense FFN. ``scale`` is 1 for hash routing and the gate's probability of
    the chosen expert for gate routing (so the gate gets gradients).
    """

    def __init__(self, config: MoEBertConfig):
        super().__init__()
        experts, hidden, size = config.num_experts, config.hidden_size, config.expert_size
        self.num_experts = experts
        self.fc1_weight = nn.Parameter(torch.empty(experts, size, hidden))
        self.fc1_bias = nn.Parameter(torch.empty(experts, size))
        self.fc2_weight = nn.Parameter(torch.empty(experts, hidden, size))
        self.fc2_bias = nn.Parameter(torch.empty(hidden))
        self.act = ACT2FN[config.hidden_act] if isinstance(config.hidden_act, str) else config.hidden_act
        self.gate = nn.Linear(hidden, experts, bias=False) if config.routing == "gate" else None
        self.LayerNorm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def route(self, tokens: torch.Tensor, routes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Expert index and output scale of each token.

        Args:
            tokens: ``(tokens, hidden)`` hidden states.
            routes: ``(tokens,)`` expert indices from the hash table; ``None`` with gate routing.

        Returns:
            ``(tokens,)`` expert indices, and ``(tokens,)`` gate probabilities of those experts or ``None`` (hash).
        """
        if self.gate is None:
            if routes is None:
                raise ValueError("Hash routing needs the expert of every position: pass `routes`.")
            return routes, None
        probabilities = self.gate(tokens).softmax(dim=-1)  # (tokens, experts)
        scale, experts = probabilities.max(dim=-1)  # (tokens,) each
        return experts, scale

    def experts_forward(self, tokens: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """Each token through its expert: tokens are grouped by expert, one matmul per expert, then put back.

        Args:
            tokens: ``(tokens, hidden)``.
            experts: ``(tokens,)`` expert index of each token.

        Returns:
            ``(tokens, hidden)`` expert outputs, output bias included.
        """
        order = experts.argsort(stable=True)  # (tokens,) grouped by expert
        counts = torch.bincount(experts, minlength=self.num_experts).tolist()
        outputs = []
        for expert, group in enumerate(tokens[order].split(counts)):  # (count, hidden) each
            neurons = self.act(F.linear(group, self.fc1_weight[expert], self.fc1_bias[expert]))  # (count, size)
            outputs.append(F.linear(neurons, self.fc2_weight[expert]))  # (count, hidden)
        grouped = torch.cat(outputs)  # (tokens, hidden) in expert order
        return torch.zeros_like(grouped).index_copy(0, order, grouped) + self.fc2_bias

    def forward(
        self, hidden_states: torch.Tensor, routes: torch.Tensor | None = None, real: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(batch, seq, hidden)`` to ``(batch, seq, hidden)``.

        Args:
            hidden_states: ``(batch, seq, hidden)``.
            routes: ``(batch, seq)`` expert indices for hash routing.
            real: ``(positions,)`` flat indices of the non-padding positions, or ``None`` for all. Padding positions
                skip the experts (their expert output is zero): no other position attends to them, and the pooler
                reads the first token, so nothing downstream changes, while padded batches save that work.
        """
        tokens = hidden_states.reshape(-1, hidden_states.shape[-1])  # (batch * seq, hidden)
        flat_routes = None if routes is None else routes.reshape(-1)
        if real is not None:
            tokens, flat_routes = tokens[real], None if flat_routes is None else flat_routes[real]  # (positions, ...)
        experts, scale = self.route(tokens, flat_routes)
        outputs = self.experts_forward(tokens, experts)  # (positions, hidden)
        if scale is not None:
            outputs = outputs * scale.unsqueeze(-1).to(outputs.dtype)
        if real is not None:
            outputs = outputs.new_zeros(
                hidden_states.numel() // hidden_states.shape[-1], outputs.shape[-1]
            ).index_copy(0, real, outputs)  # (batch * seq, hidden)
        outputs = self.dropout(outputs.view_as(hidden_states))
        return self.LayerNorm(outputs + hidden_states)


class MoEBertLayer(nn.Module):
    """BERT's self-attention block, then the mixture-of-experts FFN block."""

    def __init__(self, config: MoEBertConfig, layer_idx: int | None = None):
        super().__init__()
        self.attention = BertAttention(config, layer_idx=layer_idx)
        self.ffn = MoEFeedForward(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        routes: torch.Tensor | None,
        real: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(batch, seq, hidden)`` to ``(batch, seq, hidden)`` and the attention weights (``None`` unless eager).

        ``real``: flat indices of the non-padding positions (see ``MoEFeedForward.forward``), ``None`` for all.
        """
        attention_output, attention_weights = self.attention(hidden_states, attention_mask)
        return self.ffn(attention_output, routes, real), attention_weights


class MoEBertEncoder(nn.Module):
    """The stack of layers, under BERT's name ``encoder.layer``."""

    def __init__(self, config: MoEBertConfig):
        super().__init__()
        self.layer = nn.ModuleList([MoEBertLayer(config, layer_idx=i) for i in range(config.num_hidden_layers)])


class MoEBertPreTrainedModel(BertPreTrainedModel):
    """Base of the MoEBERT models: BERT's initialisation, plus the experts and the hash table."""

    config: MoEBertConfig
    config_class = MoEBertConfig
    base_model_prefix = "bert"
    supports_gradient_checkpointing = False
    _no_split_modules = ["BertEmbeddings", "MoEBertLayer"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        super()._init_weights(module)
        if isinstance(module, MoEFeedForward):
            for weight in (module.fc1_weight, module.fc2_weight):
                init.normal_(weight, mean=0.0, std=self.config.initializer_range)
            for bias in (module.fc1_bias, module.fc2_bias):
                init.zeros_(bias)
        elif isinstance(module, HashRouter):
            table = hash_routes(self.config.vocab_size, self.config.num_experts, self.config.hash_seed)
            init.copy_(module.expert_of_token, table.to(module.expert_of_token.device))


class MoEBertModel(MoEBertPreTrainedModel):
    """The MoEBERT encoder: BERT embeddings, layers of attention and mixture-of-experts FFNs, BERT pooler."""

    def __init__(self, config: MoEBertConfig):
        super().__init__(config)
        self.embeddings = BertEmbeddings(config)
        self.router = HashRouter(config) if config.routing == "hash" else None
        self.encoder = MoEBertEncoder(config)
        self.pooler = BertPooler(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding):
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        r"""Encode texts or text pairs.

        Args:
            input_ids: ``(batch, seq)`` token ids.
            attention_mask: ``(batch, seq)``, 1 for tokens and 0 for padding.
            token_type_ids: ``(batch, seq)``, 1 on the second text of a pair.
            position_ids: ``(batch, seq)`` positions; default ``0 .. seq - 1``.
            inputs_embeds: ``(batch, seq, hidden)`` instead of ``input_ids``; gate routing only, as hash routing
                looks the experts up by token id.
            output_attentions: Also return each layer's attention weights (they exist with
                ``attn_implementation="eager"`` only).
            output_hidden_states: Also return the embeddings and every layer's output, each ``(batch, seq, hidden)``.
            return_dict: Return a tuple when ``False``.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` and `inputs_embeds`.")
        routes = None
        if self.router is not None:
            if input_ids is None:
                raise ValueError(
                    "Hash routing sends each token to the expert of its id, so it needs `input_ids`, not "
                    "`inputs_embeds`; use a model with routing='gate' to pass embeddings."
                )
            routes = self.router(input_ids)  # (batch, seq)
        hidden_states = self.embeddings(
            input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids, inputs_embeds=inputs_embeds
        )  # (batch, seq, hidden)
        mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=hidden_states, attention_mask=attention_mask
        )
        real = None  # padding positions skip the experts
        if attention_mask is not None and not bool(attention_mask.all()):
            real = attention_mask.reshape(-1).nonzero().squeeze(1)  # (positions,)
        all_hidden_states, all_attentions = [hidden_states], []
        for layer in self.encoder.layer:
            hidden_states, attention_weights = layer(hidden_states, mask, routes, real)
            all_hidden_states.append(hidden_states)
            all_attentions.append(attention_weights)
        output = BaseModelOutputWithPooling(
            last_hidden_state=hidden_states,
            pooler_output=self.pooler(hidden_states),  # (batch, hidden)
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
            attentions=tuple(all_attentions) if output_attentions else None,
        )
        return output if return_dict is not False else output.to_tuple()


class MoEBertForSequenceClassification(MoEBertPreTrainedModel):
    """MoEBERT encoder with BERT's classification/regression head (dropout, linear) on the pooled output."""

    def __init__(self, config: MoEBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = MoEBertModel(config)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> SequenceClassifierOutput | tuple:
        r"""Classify texts or text pairs; the arguments are ``MoEBertModel.forward``'s, plus:

        Args:
            labels: ``(batch,)`` class ids, ``(batch,)`` floats for regression or ``(batch, num_labels)`` for
                multi-label; the loss (BERT's, by ``config.problem_type``) is returned only when given.
        """
        outputs = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        logits = self.classifier(self.dropout(outputs.pooler_output))  # (batch, num_labels)
        loss = None if labels is None else ForSequenceClassificationLoss(labels, logits, self.config)
        output = SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict is not False else output.to_tuple()


# save_pretrained ships this file and its config file as remote code for every Auto class (see config.auto_map).
MoEBertModel.register_for_auto_class("AutoModel")
MoEBertForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
MoEBertConfig.register_for_auto_class()

__all__ = [
    "HashRouter",
    "MoEBertForSequenceClassification",
    "MoEBertModel",
    "MoEBertPreTrainedModel",
    "MoEFeedForward",
    "hash_routes",
]
