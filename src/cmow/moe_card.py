"""The model card of a MoEBERT checkpoint, from its config, its weights and what training recorded.

``cmow.hub_cards.write_model_card`` (and ``cmow card FOLDER``) records the training run and calls
``render_moebert_card`` for a folder whose ``model_type`` is MoEBERT's; the template is ``templates/moebert_card.md``.
Sizes come from the saved model (total parameters, and the active ones: one expert per layer), never from the caller.
"""

from pathlib import Path

from huggingface_hub import ModelCard

from .configuration_moebert import MoEBertConfig
from .hub_cards import card_from_record
from .modeling_moebert import MoEBertForSequenceClassification, MoEBertModel
from .moe import active_parameters

_ROUTING = {
    "hash": "hash routing: a fixed random table sends each token id to one expert",
    "gate": "a learned gate sends each token's hidden state to its most probable expert",
}


def render_moebert_card(folder: Path, record: dict, config: MoEBertConfig) -> ModelCard:
    """The card of the MoEBERT checkpoint in ``folder`` from a training record (``hub_cards.write_model_card``'s)."""
    architecture = (config.architectures or ["MoEBertModel"])[0]
    classifier = architecture.endswith("ForSequenceClassification")
    model = (MoEBertForSequenceClassification if classifier else MoEBertModel).from_pretrained(folder)
    return card_from_record(
        record,
        template="moebert_card.md",
        pipeline_tag="text-classification" if classifier else "feature-extraction",
        tags=["moebert", "mixture-of-experts", "distillation", "custom_code"],
        weights_bytes=sum(path.stat().st_size for path in folder.glob("*.safetensors")),
        config=config,
        architecture=architecture,
        auto_class="AutoModelForSequenceClassification" if classifier else "AutoModel",
        task_phrase="text classifier" if classifier else "text encoder",
        routing=_ROUTING[config.routing],
        parameters=f"{model.num_parameters():,}",
        active_parameters=f"{active_parameters(model):,}",
    )
