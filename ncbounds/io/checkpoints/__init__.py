"""Reading trained-model checkpoints safely (the "Inputs" section of ``docs/architecture.md``).

Pure I/O: nothing here prints or depends on click.  Every failure is a :class:`CheckpointError`
whose message is one sentence naming the fix.

Supported layouts:

* a plain ``state_dict`` (``{name: Tensor}``);
* a dict wrapping it under ``state_dict``, ``model``, ``model_state_dict``, ``net``, ``ema``,
  ``state_dict_ema`` or ``module`` (other top-level entries such as ``epoch`` become ``extra``);
* PyTorch Lightning ``.ckpt`` files (``state_dict`` plus Lightning bookkeeping keys);
* ``.safetensors`` files (needs the optional ``safetensors`` package);
* TorchScript archives (``torch.jit.save``);
* whole pickled modules (``torch.save(model)``), only with ``trust=True``.

Everything is loaded to CPU first; the storage locations recorded in the file (``cuda:0`` ...)
are reported in :attr:`LoadedCheckpoint.saved_devices`.  ``torch.load`` always runs with
``weights_only=True`` unless the caller passes ``trust=True`` (the CLI's ``--trust-checkpoint``).

Modules: :mod:`~ncbounds.io.checkpoints.base` (:class:`LoadedCheckpoint`, constants, shared helpers),
:mod:`~ncbounds.io.checkpoints.pickles` (``torch.load`` with ``weights_only`` and its refusals),
:mod:`~ncbounds.io.checkpoints.formats` (safetensors, TorchScript, foreign files),
:mod:`~ncbounds.io.checkpoints.loading` (:func:`load_checkpoint` and the layout interpretation),
:mod:`~ncbounds.io.checkpoints.keys` (prefix stripping, :func:`load_into_model`) and
:mod:`~ncbounds.io.checkpoints.summary` (:func:`describe`, :func:`guess_classifier_head`); every name is
importable from ``ncbounds.io.checkpoints``.
"""

from ncbounds.io.checkpoints.base import (  # noqa: F401 - private names re-exported for existing imports
    _ATTRIBUTE_PREFIXES,
    _LIGHTNING_MARKERS,
    _MAX_LISTED,
    _NBT,
    _WRAPPER_PREFIXES,
    TRUST_FLAG,
    WRAPPER_KEYS,
    LoadedCheckpoint,
    _corrupt,
    _cpu_tensors,
    _extra_from,
    _is_tensor_dict,
    _jsonable,
    _list_names,
    _one_line,
    _sha256,
)
from ncbounds.io.checkpoints.formats import (  # noqa: F401
    _LEGACY_TORCH_MAGIC,
    _foreign_format,
    _is_torchscript_zip,
    _load_safetensors,
    _load_torchscript,
    _looks_like_safetensors,
)
from ncbounds.io.checkpoints.keys import (  # noqa: F401
    _candidate_prefixes,
    _match_score,
    _shape,
    _visible_prefix,
    load_into_model,
    strip_prefixes,
)
from ncbounds.io.checkpoints.loading import _interpret, load_checkpoint  # noqa: F401
from ncbounds.io.checkpoints.pickles import (  # noqa: F401
    _CORRUPT_MARKERS,
    _GLOBAL_RE,
    _GOT_CLASS_RE,
    _load_pickle,
    _LocationScanner,
    _refusal_error,
    _scan_zip_locations,
    _Stub,
    _torch_load,
    _unsafe_globals,
    _weights_only_reason,
    scan_unsafe_types,
)
from ncbounds.io.checkpoints.summary import _detect_prefixes, describe, guess_classifier_head  # noqa: F401

__all__ = [
    "LoadedCheckpoint",
    "WRAPPER_KEYS",
    "TRUST_FLAG",
    "load_checkpoint",
    "strip_prefixes",
    "load_into_model",
    "guess_classifier_head",
    "describe",
]
