"""cmow: distil pretrained language models into tiny, fast matrix-embedding (CMOW) models.

Importing the package registers the CMOW and MoEBERT configs and models with the transformers Auto classes, and loads
the compiled extensions ``cmow._kernel`` and ``cmow._wordpiece`` when they were built (``CMOW_NO_EXTENSION=1`` leaves
them out; see setup.py).
"""

import importlib
import logging
import os

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
)

from .configuration_cmow import CMOWConfig
from .configuration_moebert import MoEBertConfig
from .encode import encode
from .modeling_cmow import (
    CMOWForMaskedLM,
    CMOWForSequenceClassification,
    CMOWModel,
    CMOWPreTrainedModel,
)
from .modeling_moebert import MoEBertForSequenceClassification, MoEBertModel, MoEBertPreTrainedModel
from .moe import ffn_importance, moe_from_dense

__version__ = "0.1.0"

logger = logging.getLogger(__name__)

# Found in sys.modules by modeling_cmow.compiled_pooled_features and encode.compiled_wordpiece: what runs without each.
_EXTENSIONS = {
    "_kernel": ("kernel", "inference runs on the slower torch path"),
    "_wordpiece": ("tokenizer", "texts are tokenized by the slower tokenizers backend"),
}
if os.environ.get("CMOW_NO_EXTENSION", "") in ("", "0"):
    for _name, (_what, _without) in _EXTENSIONS.items():
        try:
            importlib.import_module(f"{__name__}.{_name}")
        except ImportError as error:  # pip hides the build's warning, so say it here
            missing = isinstance(error, ModuleNotFoundError) and error.name == f"{__name__}.{_name}"
            logger.warning(
                "cmow's compiled %s is not available (%s): %s. Reinstall cmow with a C++ compiler present to build "
                "it, or set CMOW_NO_EXTENSION=1 to run without cmow's compiled extensions silently.",
                _what,
                "it was not built" if missing else error,
                _without,
            )

AutoConfig.register(CMOWConfig.model_type, CMOWConfig, exist_ok=True)
AutoModel.register(CMOWConfig, CMOWModel, exist_ok=True)
AutoModelForSequenceClassification.register(CMOWConfig, CMOWForSequenceClassification, exist_ok=True)
AutoModelForMaskedLM.register(CMOWConfig, CMOWForMaskedLM, exist_ok=True)
AutoConfig.register(MoEBertConfig.model_type, MoEBertConfig, exist_ok=True)
AutoModel.register(MoEBertConfig, MoEBertModel, exist_ok=True)
AutoModelForSequenceClassification.register(MoEBertConfig, MoEBertForSequenceClassification, exist_ok=True)

__all__ = [
    "CMOWConfig",
    "CMOWForMaskedLM",
    "CMOWForSequenceClassification",
    "CMOWModel",
    "CMOWPreTrainedModel",
    "MoEBertConfig",
    "MoEBertForSequenceClassification",
    "MoEBertModel",
    "MoEBertPreTrainedModel",
    "encode",
    "ffn_importance",
    "moe_from_dense",
]
