"""The model card of a MoEBERT checkpoint, from its config, its weights and what training recorded.

``cmow.hub_cards.write_model_card`` (and ``cmow card FOLDER``) records the training run and calls
``render_moebert_card`` for a folder whose ``model_type`` is MoEBERT's; the template is ``templates/moebert_card.md``.
Sizes come from the saved model (total parameters, and the active ones: one expert per layer), never from the caller.
"""

from importlib import resources
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .configuration_moebert import MoEBertConfig
from .hub_cards import _HUB_ID, RECORD_FILE, _teacher_hub_id, public_name
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
    size = sum(path.stat().st_size for path in folder.glob("*.safetensors"))
    teacher = record.get("teacher")
    base_model = _teacher_hub_id(teacher)
    datasets = [public_name(dataset) for dataset in record.get("datasets") or []]
    eval_results = [EvalResult(**result) for result in record.get("eval_results") or []]
    card_data = ModelCardData(
        model_name=record["model_name"],
        base_model=base_model,
        datasets=[d for d in datasets if _HUB_ID.match(d) and not Path(d).exists()] or None,
        eval_results=eval_results or None,
        library_name="transformers",
        license=record.get("license"),
        pipeline_tag="text-classification" if classifier else "feature-extraction",
        tags=["moebert", "mixture-of-experts", "distillation", "custom_code"],
    )
    return ModelCard.from_template(
        card_data,
        template_str=(resources.files("cmow") / "templates" / "moebert_card.md").read_text(),
        record_file=RECORD_FILE,
        model_name=record["model_name"],
        repo_id=record.get("repo_id") or record["model_name"],
        config=config,
        architecture=architecture,
        auto_class="AutoModelForSequenceClassification" if classifier else "AutoModel",
        task_phrase="text classifier" if classifier else "text encoder",
        routing=_ROUTING[config.routing],
        parameters=f"{model.num_parameters():,}",
        active_parameters=f"{active_parameters(model):,}",
        file_size=f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.1f} KiB",
        teacher=base_model or (public_name(teacher) if teacher else None),
        teacher_url=f"https://huggingface.co/{base_model}" if base_model else None,
        datasets=datasets,
        objective=record.get("objective"),
        hyperparameters=record.get("training_args") or {},
        eval_results=eval_results,
        speed=record.get("speed"),
        versions=record.get("versions") or {},
        license=record.get("license"),
    )
