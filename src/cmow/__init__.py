"""cmow: distil pretrained language models into tiny, fast matrix-embedding (CMOW) models.

Importing the package registers the CMOW config and models with the transformers Auto classes.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
)

from .configuration_cmow import CMOWConfig
from .encode import encode
from .modeling_cmow import (
    CMOWForMaskedLM,
    CMOWForSequenceClassification,
    CMOWModel,
    CMOWPreTrainedModel,
)

__version__ = "0.1.0"

AutoConfig.register(CMOWConfig.model_type, CMOWConfig, exist_ok=True)
AutoModel.register(CMOWConfig, CMOWModel, exist_ok=True)
AutoModelForSequenceClassification.register(CMOWConfig, CMOWForSequenceClassification, exist_ok=True)
AutoModelForMaskedLM.register(CMOWConfig, CMOWForMaskedLM, exist_ok=True)

__all__ = [
    "CMOWConfig",
    "CMOWForMaskedLM",
    "CMOWForSequenceClassification",
    "CMOWModel",
    "CMOWPreTrainedModel",
    "encode",
]
