"""Builds the optional compiled extensions; all other metadata is in pyproject.toml.

``cmow._kernel`` computes the pooled CMOW features, ``cmow._wordpiece`` tokenizes ASCII texts for BERT-style WordPiece
tokenizers with exactly the ids of the ``tokenizers`` backend. Both are plain C++ against the Python C API (no torch
headers, nothing downloaded), compiled with the machine's compiler during ``pip install`` (``pip install -e .`` too).
If one cannot be built, the install goes on without it with a warning, and cmow runs its torch path or the
tokenizer's backend instead. ``CMOW_NO_EXTENSION=1`` skips the build (and, at run time, both extensions).
``CMOW_REQUIRE_EXTENSION=1`` makes a failed build an error: release wheels must contain the extensions.
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


class OptionalBuildExt(build_ext):
    """``build_ext`` that warns instead of failing when the compiler is missing or fails."""

    def run(self):
        try:
            super().run()
        except Exception as error:  # no compiler at all: distutils raises several unrelated error types
            self._warn("extensions were", error)

    def build_extension(self, extension):
        try:
            super().build_extension(extension)
        except Exception as error:
            self._warn(f"extension {extension.name} was", error)

    @staticmethod
    def _warn(what: str, error: Exception) -> None:
        if _flag("CMOW_REQUIRE_EXTENSION"):
            raise error
        message = (
            f"WARNING: cmow's compiled {what} not built ({type(error).__name__}: {error}). cmow works without them, "
            "on slower paths; install a C++ compiler (e.g. `apt install g++`) and reinstall to build them."
        )
        print(message, file=sys.stderr)


def extensions() -> list[Extension]:
    if _flag("CMOW_NO_EXTENSION"):
        print("CMOW_NO_EXTENSION is set: not building cmow's compiled extensions.", file=sys.stderr)
        return []
    if sys.platform == "win32":
        args, link_args = ["/O2", "/std:c++17"], []
    else:
        args, link_args = ["-O3", "-g0", "-std=c++17", "-pthread", "-fvisibility=hidden"], ["-pthread"]
    return [
        Extension(
            f"cmow.{name}",
            sources=[f"src/cmow/{name}.cpp"],
            language="c++",
            extra_compile_args=args,
            extra_link_args=link_args,
        )
        for name in ("_kernel", "_wordpiece")
    ]


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
