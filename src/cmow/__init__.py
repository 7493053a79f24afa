"""cmow: distil pretrained language models into tiny, fast matrix-embedding (CMOW) models.

Importing the package registers the CMOW and MoEBERT configs and models with the transformers Auto classes, and loads
the compiled kernel ``cmow._kernel`` when it was built (``CMOW_NO_EXTENSION=1`` leaves it out; see setup.py).
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

if os.environ.get("CMOW_NO_EXTENSION", "") in ("", "0"):
    try:  # modeling_cmow.compiled_pooled_features finds it in sys.modules
        importlib.import_module(f"{__name__}._kernel")
    except ImportError as error:  # pip hides the build's warning, so say it here
        missing = isinstance(error, ModuleNotFoundError) and error.name == f"{__name__}._kernel"
        logger.warning(
            "cmow's compiled kernel is not available (%s): inference runs on the slower torch path. Reinstall cmow "
            "with a C++ compiler present to build it, or set CMOW_NO_EXTENSION=1 to run without it silently.",
            "it was not built" if missing else error,
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
