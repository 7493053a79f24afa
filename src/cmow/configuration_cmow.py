"""Configuration of CMOW (Continual Multiplication of Words) models.

This file is shipped as remote code next to saved checkpoints: it imports only transformers.
"""

from transformers import PretrainedConfig

ENCODERS = ("cmow", "cbow", "hybrid")
CBOW_POOLINGS = ("mean", "sum")
PAIR_ENCODINGS = ("joint", "diffcat", "diffcat_prod")
CLASSIFIERS = ("linear", "mlp")
WEIGHT_STORAGES = ("float", "int8")
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")

AUTO_MAP = {
    "AutoConfig": "configuration_cmow.CMOWConfig",
    "AutoModel": "modeling_cmow.CMOWModel",
    "AutoModelForSequenceClassification": "modeling_cmow.CMOWForSequenceClassification",
    "AutoModelForMaskedLM": "modeling_cmow.CMOWForMaskedLM",
}


def _check_choice(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {', '.join(map(repr, allowed))}; got {value!r}.")


def _check_positive(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")


def _check_probability(name: str, value) -> None:
    if value is not None and not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be in [0, 1); got {value!r}.")


def _check_ngram_orders(orders, encoder: str) -> list[int]:
    """``orders`` as a sorted list of distinct integers >= 2; n-grams need the CBOW bag they are added to."""
    orders = list(orders or ())
    if any(not isinstance(n, int) or isinstance(n, bool) or n < 2 for n in orders) or len(set(orders)) < len(orders):
        raise ValueError(
            f"`ngram_orders` must be distinct integers >= 2 (unigrams are the token vectors), e.g. (2, 3); "
            f"got {orders!r}."
        )
    if orders and encoder == "cmow":
        raise ValueError("`ngram_orders` adds n-grams to the CBOW bag: use encoder 'cbow' or 'hybrid'.")
    return sorted(orders)


class CMOWConfig(PretrainedConfig):
    r"""Configuration of a CMOW / CBOW / Hybrid matrix-embedding encoder and its heads.

    Every token ``t`` owns a ``matrix_size x matrix_size`` matrix ``E_t`` (CMOW) and/or a ``cbow_size`` vector
    ``v_t`` (CBOW). A text ``t_1 ... t_n`` is encoded as the ordered product ``E_{t_1} E_{t_2} ... E_{t_n}``
    (flattened) and the sum or mean of its vectors. The bidirectional variant owns a second matrix table ``E'``
    multiplied in reverse order, ``E'_{t_n} ... E'_{t_1}``. Products are kept finite by rescaling them to the
    Frobenius norm of the identity, see ``modeling_cmow.normalize_product``.

    Args:
        vocab_size: Number of tokens; must equal the tokenizer's vocabulary size.
        encoder: ``"cmow"`` (matrix products), ``"cbow"`` (bag of vectors) or ``"hybrid"`` (both, concatenated).
        bidirectional: Add a second matrix table multiplied in reverse order (needs ``encoder`` "cmow" or "hybrid").
        matrix_size: Side ``d`` of the token matrices; a matrix contributes ``d * d`` features.
        cbow_size: Size of the CBOW token vectors.
        cbow_pooling: ``"mean"`` or ``"sum"`` of the token vectors (per-token outputs are prefix means or sums).
        ngram_orders: Orders ``n >= 2`` of hashed token n-grams added to the CBOW bag, e.g. ``(2, 3)``; empty: none.
            Each n-gram of consecutive token ids inside a text owns a ``cbow_size`` vector in one table of
            ``ngram_buckets`` rows, found by a fixed integer hash (``modeling_cmow.ngram_bucket_ids``), and is summed
            into the CBOW part with the token vectors (with mean pooling the divisor stays the number of tokens).
            The width of the model does not change. Needs a CBOW part (encoder "cbow" or "hybrid").
        ngram_buckets: Hash buckets (rows) of the n-gram table; it holds ``ngram_buckets * cbow_size`` parameters.
        initializer_range: Standard deviation of the noise added to the identity when initialising token matrices,
            and of the normal initialisation of CBOW vectors and linear layers.
        hidden_dropout_prob: Dropout on the encoder's outputs.
        embedding_size: Size of the sentence embedding. When set, the model owns a linear ``pooler`` from the pooled
            features (``hidden_size``) to this size, and its ``pooler_output`` (what ``encode`` returns) is that
            projection; general distillation sets it to the teacher's embedding size and trains it to match the
            teacher's sentence embeddings. ``None`` (no pooler): ``pooler_output`` is the pooled features themselves.
        pair_encoding: How a sentence pair ``(a, b)`` (``tokenizer(a, b)``) is classified. ``"joint"`` encodes
            ``[CLS] a [SEP] b [SEP]`` as one text (and is right for single sentences); ``"diffcat"`` encodes each side
            alone, ``[CLS] a [SEP]`` and ``[CLS] b [SEP]`` (``b [SEP]`` when ``cls_token_id`` is ``None``), and
            classifies ``[a; b; |a - b|]``; ``"diffcat_prod"`` classifies ``[a; b; |a - b|; a * b]``. A single text
            given to a ``diffcat`` model is classified as a pair with an empty second text (encoded as zero).
        classifier: ``"linear"`` or ``"mlp"`` (dropout, Linear(in, classifier_hidden_size), ReLU, LayerNorm, Linear).
        classifier_hidden_size: Width of the MLP classifier.
        classifier_dropout: Dropout before the classifier; defaults to ``hidden_dropout_prob`` when ``None``.
        pad_token_id: Padding token; its matrix is the identity and its vector zero, so padding changes nothing.
        sep_token_id: Separator token; used to find the second text of a pair when there are no ``token_type_ids``.
        cls_token_id: Classification token that starts every tokenized text; ``diffcat`` pair encodings put it in
            front of the second text too, so both sides are encoded like single texts.
        weight_storage: How ``save_pretrained`` stores the encoder's weights (token tables and pooler): ``"float"``
            (the model's dtype) or ``"int8"`` (each row as int8 with one float32 scale; matrix rows as their difference
            from the identity; ``modeling_cmow.quantize_rows``), about 4x smaller than float32. Loading dequantises to
            float32 and sets this back to ``"float"``: products always run in float32.
        teacher: Hub id or path of the model this student was distilled from (informational).
        distillation: Settings of the distillation that produced this model (informational).
    """

    model_type = "cmow"

    def __init__(
        self,
        vocab_size: int = 30522,
        encoder: str = "hybrid",
        bidirectional: bool = True,
        matrix_size: int = 20,
        cbow_size: int = 400,
        cbow_pooling: str = "mean",
        ngram_orders: tuple[int, ...] | list[int] = (),
        ngram_buckets: int = 2**18,
        initializer_range: float = 0.01,
        hidden_dropout_prob: float = 0.0,
        embedding_size: int | None = None,
        pair_encoding: str = "joint",
        classifier: str = "mlp",
        classifier_hidden_size: int = 1000,
        classifier_dropout: float | None = None,
        pad_token_id: int | None = 0,
        sep_token_id: int | None = None,
        cls_token_id: int | None = None,
        weight_storage: str = "float",
        teacher: str | None = None,
        distillation: dict | None = None,
        **kwargs,
    ):
        _check_positive("vocab_size", vocab_size)
        _check_choice("encoder", encoder, ENCODERS)
        _check_positive("matrix_size", matrix_size)
        _check_positive("cbow_size", cbow_size)
        _check_choice("cbow_pooling", cbow_pooling, CBOW_POOLINGS)
        ngram_orders = _check_ngram_orders(ngram_orders, encoder)
        _check_positive("ngram_buckets", ngram_buckets)
        if embedding_size is not None:
            _check_positive("embedding_size", embedding_size)
        _check_choice("pair_encoding", pair_encoding, PAIR_ENCODINGS)
        _check_choice("classifier", classifier, CLASSIFIERS)
        _check_choice("weight_storage", weight_storage, WEIGHT_STORAGES)
        _check_positive("classifier_hidden_size", classifier_hidden_size)
        _check_probability("hidden_dropout_prob", hidden_dropout_prob)
        _check_probability("classifier_dropout", classifier_dropout)
        if bidirectional and encoder == "cbow":
            raise ValueError("`bidirectional=True` needs a matrix encoder: use encoder 'cmow' or 'hybrid'.")
        if initializer_range < 0:
            raise ValueError(f"`initializer_range` must be >= 0; got {initializer_range!r}.")
        for name, token_id in (
            ("pad_token_id", pad_token_id),
            ("sep_token_id", sep_token_id),
            ("cls_token_id", cls_token_id),
        ):
            if token_id is not None and not 0 <= token_id < vocab_size:
                raise ValueError(f"`{name}` must be in [0, vocab_size={vocab_size}); got {token_id!r}.")
        problem_type = kwargs.get("problem_type")
        if problem_type is not None:
            _check_choice("problem_type", problem_type, PROBLEM_TYPES)

        self.vocab_size = vocab_size
        self.encoder = encoder
        self.bidirectional = bidirectional
        self.matrix_size = matrix_size
        self.cbow_size = cbow_size
        self.cbow_pooling = cbow_pooling
        self.ngram_orders = ngram_orders
        self.ngram_buckets = ngram_buckets
        self.initializer_range = initializer_range
        self.hidden_dropout_prob = hidden_dropout_prob
        self.embedding_size = embedding_size
        self.pair_encoding = pair_encoding
        self.classifier = classifier
        self.classifier_hidden_size = classifier_hidden_size
        self.classifier_dropout = classifier_dropout
        self.cls_token_id = cls_token_id
        self.weight_storage = weight_storage
        self.teacher = teacher
        self.distillation = distillation
        kwargs.setdefault("auto_map", dict(AUTO_MAP))
        super().__init__(pad_token_id=pad_token_id, sep_token_id=sep_token_id, **kwargs)

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs) -> tuple[dict, dict]:
        """transformers' ``get_config_dict``, but a folder or repo without ``config.json`` is an error.

        transformers returns an empty dict there, which would silently build a model of the default sizes.
        """
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if not config_dict:
            raise OSError(
                f"{pretrained_model_name_or_path} has no config.json, so it is not a saved CMOW model: pass a folder "
                "written by `model.save_pretrained`, or build the model from a CMOWConfig."
            )
        return config_dict, kwargs

    @classmethod
    def from_tokenizer(cls, tokenizer, **kwargs) -> "CMOWConfig":
        """A config whose vocabulary, padding, separator and classification ids are the tokenizer's; ``kwargs`` set
        the rest."""
        return cls(
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            sep_token_id=tokenizer.sep_token_id,
            cls_token_id=tokenizer.cls_token_id,
            **kwargs,
        )

    @property
    def use_cmow(self) -> bool:
        return self.encoder in ("cmow", "hybrid")

    @property
    def use_cbow(self) -> bool:
        return self.encoder in ("cbow", "hybrid")

    @property
    def matrix_features(self) -> int:
        """Features of one flattened token matrix, ``d * d``."""
        return self.matrix_size**2

    @property
    def hidden_size(self) -> int:
        """Size of the per-token and pooled representations: ``[cbow; cmow_fw; cmow_bw]``."""
        size = self.cbow_size if self.use_cbow else 0
        if self.use_cmow:
            size += self.matrix_features * (2 if self.bidirectional else 1)
        return size

    @property
    def sentence_embedding_size(self) -> int:
        """Size of ``pooler_output``: ``embedding_size`` when the model has a pooler, else ``hidden_size``."""
        return self.embedding_size or self.hidden_size

    @property
    def projection_dim(self) -> int:
        """``sentence_embedding_size``, under the name sentence-transformers reads an embedding's size from."""
        return self.sentence_embedding_size

    @property
    def classifier_input_size(self) -> int:
        """Input width of the sequence-classification head, after pair encoding."""
        return self.hidden_size * {"joint": 1, "diffcat": 3, "diffcat_prod": 4}[self.pair_encoding]

    @property
    def num_embedding_parameters(self) -> int:
        """Parameters of the token tables (matrices and vectors) and of the n-gram table (with its padding row)."""
        ngrams = (self.ngram_buckets + 1) * self.cbow_size if self.ngram_orders else 0
        return self.vocab_size * self.hidden_size + ngrams


__all__ = ["CMOWConfig"]
