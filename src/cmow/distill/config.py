"""Settings of a general distillation run: one dataclass whose docstring states the objective."""

import math
from dataclasses import asdict, dataclass

from ..hub_cards import public_name
from .student_tokenizer import MIN_VOCAB_SIZE

OBJECTIVES = ("auto", "mlm", "hidden")
INITS = ("static", "random")
WEIGHTINGS = ("sif", "zipf", "none")
HIDDEN_LOSSES = ("cosine", "mse", "mse+cosine")
MIXED_PRECISIONS = ("no", "fp16", "bf16")


@dataclass
class DistillationConfig:
    r"""How to distil a teacher into a CMOW student.

    The objective follows from the teacher (``objective="auto"``):

    * ``"mlm"``, a teacher with a masked-LM head (``*ForMaskedLM``), the paper's objective. Inputs are masked as in
      BERT (``mlm_probability`` of the tokens; of those 80% ``[MASK]``, 10% random, 10% kept); teacher and student see
      the same masked input. With student logits ``s_i``, teacher logits ``t_i`` at the non-pad positions ``i`` and
      the original tokens ``y_i`` at the masked positions ``M``::

          L = alpha_ce * T^2 * mean_i KL(softmax(t_i/T) || softmax(s_i/T)) + alpha_mlm * mean_{i in M} CE(s_i, y_i)

    * ``"hidden"``, any other teacher (an encoder or a sentence-transformer). Inputs are not masked. With the
      student's sentence embedding ``s = W_pool p`` (its ``pooler`` applied to the pooled features ``p``; kept in the
      saved model, it is what ``encode`` returns), its per-token outputs ``h_i``, the teacher's sentence embeddings
      ``e`` (the teacher's own pooling, e.g. mean, then L2-normalised if it declares a Normalize module) and last
      hidden states ``H_i``, and a training-only projection ``W_tok``::

          L = alpha_sentence * mean_b D(s_b, e_b)
            + alpha_contrastive * mean_b -log softmax_c(cos(s_b, e_c) / tau)[b]                 (InfoNCE in the batch)
            + alpha_relational * mean_{b != c} (cos(s_b, s_c) - cos(e_b, e_c))^2
            + alpha_order * mean_{(o, c)} 1 - cos(s_o - s_c, e_o - e_c)     (o: a text, c: its word-swapped copy)
            + alpha_swap * mean_{x in o, c} BCE(w . s_x + b, [x is a copy])              (swap detection)
            + alpha_token * mean_i D(W_tok h_i, H_i)

      where ``D`` is ``hidden_loss``: ``"cosine"`` ``1 - cos(a, b)``, ``"mse"`` ``mean_k (a_k - b_k)^2`` or
      ``"mse+cosine"`` their sum; ``i`` runs over non-pad positions, ``b, c`` over the batch; ``tau`` is
      ``contrastive_temperature``. Terms with weight 0 are not computed (``alpha_token = 0`` skips the per-token
      prefix products and their targets entirely).

    With ``order_augmentation = r`` each batch also holds, for a fraction ``r`` of its texts, a copy with two adjacent
    words swapped (``cmow.distill.augmentation``), embedded by the teacher like any text. The swap-detection term is
    self-supervised (like StructBERT's word-structural objective): a training-only logistic regression ``(w, b)`` on
    the sentence embedding must tell the copies from their originals, which only the order-aware matrix part can do.

    Before training, ``init="static"`` makes the student a static embedding model of the teacher (see
    ``cmow.distill.initialization``): CBOW rows are the teacher's per-token outputs, PCA-rotated and SIF-weighted by
    the corpus's token frequencies, and the pooler maps them back, so step 0 already scores like model2vec.

    By default the student uses the teacher's tokenizer. ``student_vocab_size`` trains a smaller vocabulary of the
    same kind on the corpus (``cmow.distill.student_tokenizer``), or ``student_tokenizer`` names a ready one; each
    model then tokenizes a text its own way, and the per-token term compares the teacher states aligned to the
    student's tokens by character offsets.

    Training stops after ``max_steps`` optimizer steps or ``num_epochs`` passes over the corpus, whichever comes first.

    Args:
        objective: ``"auto"``, ``"mlm"`` or ``"hidden"``.
        max_seq_length: Texts are truncated to this many tokens.
        batch_size: Texts per micro-batch and process.
        gradient_accumulation_steps: Micro-batches per optimizer step.
        learning_rate: Peak AdamW learning rate, reached after ``warmup_steps`` and decayed linearly to zero at
            ``max_steps`` (kept constant when ``max_steps`` is ``None``).
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warm-up steps.
        max_steps: Optimizer steps to train; ``None`` trains ``num_epochs`` epochs.
        num_epochs: Passes over the corpus.
        stop_at_step: End the run early at this step, saving a checkpoint, without changing the schedule (for
            time-boxed jobs continued later with ``resume``).
        max_grad_norm: Gradient clipping norm; ``0`` disables clipping.
        sparse_embeddings: Sparse gradients for the token tables and ``cmow.training.LazyAdamW`` (one process only):
            about 20% faster steps here, but AdamW's dense updates reached a better student in the same number of
            steps (200 default steps: STS-B Spearman 0.632 dense vs 0.604 sparse), so it is off by default.
        mixed_precision: ``"no"``, ``"fp16"`` or ``"bf16"`` (CMOW products always run in float32).
        seed: Seed of initialisation, masking and shuffling.
        temperature: ``T`` of the MLM distillation.
        alpha_ce: Weight of the KL term (paper: 5.0).
        alpha_mlm: Weight of the masked-LM term (paper: 2.0).
        mlm_probability: Fraction of tokens masked.
        hidden_loss: ``D`` of the hidden-state objective.
        alpha_token: Weight of the per-token term.
        alpha_sentence: Weight of the sentence term.
        alpha_contrastive: Weight of the in-batch contrastive (InfoNCE) term.
        contrastive_temperature: ``tau`` of the contrastive term.
        alpha_relational: Weight of the in-batch similarity-structure term.
        order_augmentation: Fraction of texts that get a word-swapped, teacher-labelled copy in their batch.
        alpha_order: Weight of the term that matches the direction of the change a swap makes (needs
            ``order_augmentation``).
        alpha_swap: Weight of the swap-detection term (needs ``order_augmentation``).
        student_vocab_size: Train a student vocabulary of this many tokens on the corpus (a smaller model); ``None``
            keeps the teacher's tokenizer.
        student_tokenizer: Folder or Hub id of a ready tokenizer for the student, instead of the teacher's.
        student_tokenizer_texts: Corpus texts the student vocabulary is trained on.
        init: ``"static"`` (teacher-derived CBOW table and pooler, see above) or ``"random"``.
        init_weighting: Token weights of the static initialisation: ``"sif"`` (corpus frequencies), ``"zipf"``
            (model2vec's estimate from the vocabulary order) or ``"none"``.
        init_sif_coefficient: ``a`` of the SIF weights ``a / (a + p_t)``.
        init_count_texts: Corpus texts whose tokens are counted for the SIF weights.
        shuffle_buffer_size: Texts in the streaming shuffle buffer; ``0`` keeps the corpus order.
        text_column: Column of the corpus that holds the text.
        save_steps: Save a resumable checkpoint every this many steps; ``0`` saves none.
        save_total_limit: Checkpoints kept (older ones are deleted).
        logging_steps: Log losses and throughput every this many steps.
        cache_dir: Store the teacher's targets under this folder and reuse them in later epochs and runs
            (``"hidden"`` objective only; every epoch then sees the corpus in the same order).
        report_to: Tracker for metrics: ``"auto"`` (tensorboard if installed), ``"tensorboard"`` or ``"none"``.
    """

    objective: str = "auto"
    max_seq_length: int = 128
    batch_size: int = 32
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    max_steps: int | None = None
    num_epochs: int = 1
    stop_at_step: int | None = None
    max_grad_norm: float = 1.0
    sparse_embeddings: bool = False
    mixed_precision: str = "no"
    seed: int = 42
    temperature: float = 2.0
    alpha_ce: float = 5.0
    alpha_mlm: float = 2.0
    mlm_probability: float = 0.15
    hidden_loss: str = "cosine"
    alpha_token: float = 0.0
    alpha_sentence: float = 1.0
    alpha_contrastive: float = 0.0
    contrastive_temperature: float = 0.05
    alpha_relational: float = 0.0
    order_augmentation: float = 0.0
    alpha_order: float = 0.0
    alpha_swap: float = 0.0
    student_vocab_size: int | None = None
    student_tokenizer: str | None = None
    student_tokenizer_texts: int = 200_000
    init: str = "static"
    init_weighting: str = "sif"
    init_sif_coefficient: float = 1e-3
    init_count_texts: int = 200_000
    shuffle_buffer_size: int = 10_000
    text_column: str = "text"
    save_steps: int = 1000
    save_total_limit: int = 2
    logging_steps: int = 50
    cache_dir: str | None = None
    report_to: str = "auto"

    def __post_init__(self):
        for name, allowed in (
            ("objective", OBJECTIVES),
            ("hidden_loss", HIDDEN_LOSSES),
            ("mixed_precision", MIXED_PRECISIONS),
            ("report_to", ("auto", "tensorboard", "none")),
            ("init", INITS),
            ("init_weighting", WEIGHTINGS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"`{name}` must be one of {', '.join(map(repr, allowed))}; got {getattr(self, name)!r}."
                )
        for name in ("max_seq_length", "batch_size", "gradient_accumulation_steps", "num_epochs", "save_total_limit"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1; got {getattr(self, name)!r}.")
        if self.student_vocab_size is not None and self.student_tokenizer is not None:
            raise ValueError("Pass either `student_vocab_size` (train a vocabulary) or `student_tokenizer`, not both.")
        own_vocabulary = self.student_vocab_size is not None or self.student_tokenizer is not None
        if own_vocabulary and self.objective == "mlm":
            raise ValueError(
                "The 'mlm' objective compares the teacher's and the student's predictions over one vocabulary: a "
                "student vocabulary needs objective 'hidden' (or 'auto' with a teacher without an MLM head)."
            )
        if self.student_vocab_size is not None and self.student_vocab_size < MIN_VOCAB_SIZE:
            raise ValueError(f"`student_vocab_size` must be >= {MIN_VOCAB_SIZE}; got {self.student_vocab_size!r}.")
        for name in ("max_steps", "stop_at_step"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1 or None; got {getattr(self, name)!r}.")
        if not 0.0 <= self.order_augmentation <= 1.0:
            raise ValueError(f"`order_augmentation` must be in [0, 1]; got {self.order_augmentation!r}.")
        for name in ("alpha_order", "alpha_swap"):
            if getattr(self, name) and not self.order_augmentation:
                raise ValueError(f"`{name}` needs word-swapped copies to compare: set `order_augmentation` > 0.")
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"`mlm_probability` must be in (0, 1); got {self.mlm_probability!r}.")
        # NaN fails every comparison, and an infinite value would make the loss or the weights infinite.
        positive = (
            "learning_rate",
            "temperature",
            "contrastive_temperature",
            "init_sif_coefficient",
            "init_count_texts",
            "student_tokenizer_texts",
        )
        for name in positive:
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"`{name}` must be a finite number > 0; got {getattr(self, name)!r}.")
        weights = (
            "alpha_token",
            "alpha_sentence",
            "alpha_contrastive",
            "alpha_relational",
            "alpha_order",
            "alpha_swap",
        )
        for name in ("weight_decay", "max_grad_norm", "warmup_steps", "alpha_ce", "alpha_mlm", *weights):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"`{name}` must be a finite number >= 0; got {getattr(self, name)!r}.")
        if not any(getattr(self, name) for name in weights):
            raise ValueError(f"At least one of {', '.join(weights)} must be > 0 for the hidden-state objective.")

    def to_dict(self) -> dict:
        """The settings, without machine-specific paths, for ``config.distillation``."""
        settings = asdict(self)
        settings.pop("cache_dir")
        if self.student_tokenizer is not None:
            settings["student_tokenizer"] = public_name(self.student_tokenizer)
        return settings
