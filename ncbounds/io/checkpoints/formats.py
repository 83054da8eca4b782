"""Recognising a checkpoint's container (safetensors, TorchScript, not-a-checkpoint) and reading the
non-pickle ones: ``.safetensors`` (optional ``safetensors`` package) and TorchScript archives, both to CPU."""

from __future__ import annotations

import struct
import warnings
import zipfile

import torch

from ncbounds.errors import CheckpointError
from ncbounds.io.checkpoints.base import _corrupt


def _is_torchscript_zip(zf: zipfile.ZipFile) -> bool:
    for name in zf.namelist():
        parts = name.split("/")
        if len(parts) == 2 and parts[1] == "constants.pkl":
            return True
        if len(parts) > 2 and parts[1] == "code":
            return True
    return False


def _looks_like_safetensors(path: str, size: int) -> bool:
    if size < 10:
        return False
    with open(path, "rb") as fh:
        head = fh.read(9)
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n <= size - 8 and head[8:9] == b"{"


def _load_safetensors(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        from safetensors import safe_open  # optional dependency
    except ImportError:
        raise CheckpointError(
            f"checkpoint {path} is a safetensors file; reading .safetensors needs "
            "`pip install safetensors`."
        ) from None
    try:
        sd: dict[str, torch.Tensor] = {}
        with safe_open(path, framework="pt", device="cpu") as fh:
            metadata = fh.metadata() or {}
            for key in fh.keys():
                sd[key] = fh.get_tensor(key)
    except Exception as exc:  # SafetensorError and friends
        raise _corrupt(path, str(exc) or type(exc).__name__) from None
    return sd, dict(metadata)


def _load_torchscript(path: str) -> torch.nn.Module:
    try:
        with warnings.catch_warnings():  # torch >= 2.9 deprecates torch.jit; stay quiet
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(path, map_location="cpu")
    except Exception as exc:
        raise _corrupt(path, f"TorchScript archive: {exc}") from None


#: First bytes of the legacy (non-zip) torch.save format: the pickled magic number 0x1950a86a20f9469cfc6c.
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def _foreign_format(path: str) -> str | None:
    """What a non-zip file is when it is recognisably *not* a torch.save file (None when it may be one).

    torch.save writes a zip archive (PyTorch ≥ 1.6) or, in the legacy format, a pickle that starts with
    :data:`_LEGACY_TORCH_MAGIC`. A pickle without that magic was written by ``pickle.dump``; other
    files are recognised by their first bytes. Random or truncated bytes return None (reported as
    corrupt by the loader).
    """
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if head.startswith(_LEGACY_TORCH_MAGIC):
        return None
    if head.startswith(b"\x93NUMPY"):
        return "a NumPy .npy array file"
    if head.startswith(b"\x89HDF\r\n"):
        return "an HDF5 file (e.g. a Keras .h5 model)"
    if head.startswith(b"\x80") and len(head) > 1 and 2 <= head[1] <= 5:
        return "a plain Python pickle (written by pickle.dump, not by torch.save)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text and all(ch.isprintable() or ch in "\r\n\t" for ch in text):
        return "a JSON file" if text.lstrip().startswith(("{", "[")) else "a text file"
    return None
