"""General distillation of any Hub teacher into a CMOW student (``cmow distill``).

``distill(teacher, corpus, output_dir)`` loads everything by name; ``distill_from_model(teacher, tokenizer, student,
dataset, output_dir)`` takes ready objects and does the work. ``DistillationConfig`` holds the settings and states
the objectives.
"""

from .api import distill
from .config import DistillationConfig
from .teacher import TeacherPooling
from .trainer import distill_from_model

__all__ = ["DistillationConfig", "TeacherPooling", "distill", "distill_from_model"]
