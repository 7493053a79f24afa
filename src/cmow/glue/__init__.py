"""GLUE: data, metrics and task-specific training of CMOW models."""

from .data import TASKS, GlueTask, load_glue

__all__ = ["TASKS", "GlueTask", "load_glue"]
