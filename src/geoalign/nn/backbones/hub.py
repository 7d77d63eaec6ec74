"""Where pretrained weights are looked for, and the error that says so when they are not found."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from geoalign.errors import WeightsNotFoundError

_TRUE = {"1", "on", "yes", "true"}


def hf_hub_cache_dir() -> Path:
    """The Hugging Face hub cache as huggingface_hub resolves it, read from the environment NOW.

    Hand-written because `huggingface_hub.constants.HF_HUB_CACHE` is frozen when that module is
    first imported; we pass this folder to `from_pretrained(cache_dir=...)`, so the folder we search
    and the folder we name in errors are always the same.
    """
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.path.expandvars(os.environ["HF_HUB_CACHE"])).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):  # legacy name, still honoured by huggingface_hub
        return Path(os.path.expandvars(os.environ["HUGGINGFACE_HUB_CACHE"])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def offline_mode(local_files_only: bool | None = None) -> bool:
    """Explicit argument wins; otherwise HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE decide."""
    if local_files_only is not None:
        return local_files_only
    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return any((flag or "").strip().lower() in _TRUE for flag in flags)


def hf_repo_cache_folder(repo_id: str) -> Path:
    return hf_hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))


def torch_checkpoints_dir() -> Path:
    """torch.hub's download folder ($TORCH_HOME/hub/checkpoints, read at call time)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def looks_like_path(text: str) -> bool:
    """A local path rather than a hub repo id ("org/name" has exactly one slash and no dots first)."""
    return (
        text.startswith(("/", "./", "../", "~", "\\"))
        or text.count("/") > 1
        or (len(text) > 1 and text[1] == ":")  # Windows drive
        or Path(text).expanduser().exists()
    )


def missing_weights(
    what: str, looked_in: Sequence[str], fixes: Sequence[str], cause: BaseException | None = None
) -> WeightsNotFoundError:
    """Build the error users see: what was wanted, every place searched, every way to fix it."""
    lines = [f"Could not load {what}.", "Looked in:"]
    lines += [f"  - {place}" for place in looked_in]
    lines.append("To fix, do one of:")
    lines += [f"  - {fix}" for fix in fixes]
    if cause is not None:
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        lines.append(f"(underlying error: {type(cause).__name__}: {reason})")
    return WeightsNotFoundError("\n".join(lines))


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report (it lists every skipped text-tower weight) and progress."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def read_preprocessor_config(
    source: str, is_local: bool, offline: bool, cache_dir: Path
) -> dict | None:
    """A checkpoint's preprocessor_config.json as a dict, or None when absent or unreachable."""
    try:
        if is_local:
            path = Path(source) / "preprocessor_config.json"
        else:
            from huggingface_hub import hf_hub_download

            path = Path(
                hf_hub_download(
                    source,
                    "preprocessor_config.json",
                    cache_dir=cache_dir,
                    local_files_only=offline,
                )
            )
        return json.loads(path.read_text())
    except Exception:  # absent or unreachable: callers fall back to published defaults
        return None
