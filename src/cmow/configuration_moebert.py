"""Configuration of MoEBERT students: BERT whose feed-forward networks are mixtures of experts (Zuo et al., 2022).

This file is shipped as remote code next to saved checkpoints: it imports only transformers.
"""

from transformers import BertConfig

ROUTINGS = ("hash", "gate")

AUTO_MAP = {
    "AutoConfig": "configuration_moebert.MoEBertConfig",
    "AutoModel": "modeling_moebert.MoEBertModel",
    "AutoModelForSequenceClassification": "modeling_moebert.MoEBertForSequenceClassification",
}


def _check_int(name: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}; got {value!r}.")


def min_shared_size(intermediate_size: int, num_experts: int, expert_size: int) -> int:
    """The fewest shared neurons with which the experts' unique parts fit in the FFN.

    The unique parts fit when ``shared + num_experts * (expert_size - shared) <= intermediate_size``, that is when
    ``shared >= (num_experts * expert_size - intermediate_size) / (num_experts - 1)``.
    """
    if num_experts == 1:
        return 0
    excess = num_experts * expert_size - intermediate_size
    return max(0, -(-excess // (num_experts - 1)))  # ceiling division


def default_shared_size(intermediate_size: int, num_experts: int, expert_size: int) -> int:
    """A quarter of the neurons (at most ``expert_size``), or more where the unique parts would not fit otherwise.

    With the defaults on BERT-base (4 experts of 1536 of the 3072 neurons) that is 1024 shared neurons, so every
    neuron is used exactly once.
    """
    quarter = min(expert_size, intermediate_size // 4)
    return max(quarter, min_shared_size(intermediate_size, num_experts, expert_size))


class MoEBertConfig(BertConfig):
    r"""Configuration of a BERT encoder whose every feed-forward network (FFN) is a mixture of experts.

    Each FFN of ``intermediate_size`` neurons becomes ``num_experts`` experts of ``expert_size`` neurons each; every
    token goes to exactly one expert, so a token costs ``expert_size`` instead of ``intermediate_size`` neurons. When
    converted from a dense model (``cmow.moe.moe_from_dense``), the ``shared_size`` most important neurons are in every
    expert and the rest are dealt out over the experts, so that each expert starts as a pruned copy of the dense FFN.
    All other settings are ``BertConfig``'s.

    Args:
        num_experts: Experts per layer.
        expert_size: Neurons per expert, shared ones included; default ``intermediate_size // 2``.
        shared_size: Neurons that every expert holds (the most important ones); default a quarter of
            ``intermediate_size``, raised where needed so that the unique parts fit (``default_shared_size``). Must be
            at most ``expert_size``, and the unique parts must fit in the rest:
            ``shared_size + num_experts * (expert_size - shared_size) <= intermediate_size``.
        routing: ``"hash"``: a token goes to the expert a fixed random table assigns to its id (balanced over the
            vocabulary, built from ``hash_seed``); needs ``input_ids``. ``"gate"``: a learned linear gate per layer
            picks the most probable expert for each hidden state, whose output is scaled by that probability.
        hash_seed: Seed of the token-to-expert table of ``"hash"`` routing.
        **kwargs: ``BertConfig``'s settings (``vocab_size``, ``hidden_size``, ``num_labels``...).
    """

    model_type = "cmow-moebert"

    def __init__(
        self,
        num_experts: int = 4,
        expert_size: int | None = None,
        shared_size: int | None = None,
        routing: str = "hash",
        hash_seed: int = 0,
        **kwargs,
    ):
        kwargs.setdefault("auto_map", dict(AUTO_MAP))
        super().__init__(**kwargs)
        intermediate_size = self.intermediate_size
        _check_int("num_experts", num_experts, 1)
        if expert_size is None:
            expert_size = max(intermediate_size // 2, 1)
        _check_int("expert_size", expert_size, 1)
        if expert_size > intermediate_size:
            raise ValueError(
                f"`expert_size` must be at most intermediate_size={intermediate_size}; got {expert_size!r}."
            )
        if shared_size is None:
            shared_size = default_shared_size(intermediate_size, num_experts, expert_size)
        _check_int("shared_size", shared_size, 0)
        if shared_size > expert_size:
            raise ValueError(f"`shared_size` must be at most expert_size={expert_size}; got {shared_size!r}.")
        needed = shared_size + num_experts * (expert_size - shared_size)
        if needed > intermediate_size:
            raise ValueError(
                f"{num_experts} experts of {expert_size} neurons sharing {shared_size} need {needed} distinct neurons "
                f"but the FFN has intermediate_size={intermediate_size}: raise `shared_size` to at least "
                f"{min_shared_size(intermediate_size, num_experts, expert_size)} or lower `expert_size` or "
                "`num_experts`."
            )
        if routing not in ROUTINGS:
            raise ValueError(f"`routing` must be one of {', '.join(map(repr, ROUTINGS))}; got {routing!r}.")
        if not isinstance(hash_seed, int) or isinstance(hash_seed, bool):
            raise ValueError(f"`hash_seed` must be an integer; got {hash_seed!r}.")
        self.num_experts = num_experts
        self.expert_size = expert_size
        self.shared_size = shared_size
        self.routing = routing
        self.hash_seed = hash_seed

    @property
    def unique_size(self) -> int:
        """Neurons of each expert that no other expert holds."""
        return self.expert_size - self.shared_size


__all__ = ["MoEBertConfig"]
