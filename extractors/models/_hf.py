"""Helpers shared by the Hugging Face ``transformers`` families (``minilm``, ``hf_chem``, ``hf_llm``, ``prostt5``).

Not a family module (the leading underscore keeps it out of :data:`extractors.registry.FAMILIES`); torch and
transformers are imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "HIDDEN_LAYER",
    "PADDED_CHARS_PER_CHUNK",
    "check_hidden_layer",
    "encode_by_length",
    "hidden_layer",
    "hidden_state",
    "length_sorted_chunks",
    "load_model",
    "load_tokenizer",
    "masked_mean",
    "resolve_weights",
    "torch_dtype",
]

#: padded size (rows × longest input, in characters) of one forward pass of :func:`encode_by_length`; on a 2-core CPU
#: MiniLM on XYZ texts runs 37 inputs/s in padded batches of 32, 64/s in chunks of this size (SMILES still fill 32).
PADDED_CHARS_PER_CHUNK = 2048

_DTYPES = ("float32", "bfloat16", "float16", "auto")


def resolve_weights(weights: str | None, hub_id: str) -> str:
    """Where ``from_pretrained`` loads from: ``weights`` (a local snapshot directory, or another Hub id) when given,
    else the model's Hub id (found in the local Hugging Face cache, downloaded only when the machine is online)."""
    return str(weights) if weights else hub_id


def torch_dtype(name: str) -> Any:
    """``"float32"``/``"bfloat16"``/``"float16"`` → the torch dtype; ``"auto"`` → ``"auto"`` (the checkpoint's)."""
    if name not in _DTYPES:
        raise ValueError(f"`dtype` must be one of {_DTYPES}, got {name!r}.")
    if name == "auto":
        return "auto"
    import torch

    return getattr(torch, name)


def load_tokenizer(path: str, *, trust_remote_code: bool = False, **kwargs: Any) -> Any:
    """``AutoTokenizer.from_pretrained(path)`` with right padding (so padded batches keep every real token's
    position, as in the unpadded input) and a pad token (the EOS token when the tokenizer has none)."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
    tok.padding_side = "right"
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError(f"tokenizer at {path} has neither a pad nor an EOS token; cannot batch inputs.")
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    path: str,
    *,
    auto_class: str = "AutoModel",
    dtype: str = "float32",
    device: str = "cpu",
    device_map: str | None = None,
    trust_remote_code: bool = False,
    config_overrides: dict[str, Any] | None = None,
) -> Any:
    """``<auto_class>.from_pretrained(path)`` in eval mode: the base model (no language-model head), so its output
    ``last_hidden_state`` is the last hidden layer. ``config_overrides`` are set on the loaded config first (e.g.
    MoLFormer's ``deterministic_eval``). ``device_map`` (e.g. ``"auto"``, needs ``accelerate``) spreads a large
    model over the visible devices instead of moving it to ``device``."""
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    extra: dict[str, Any] = {"device_map": device_map} if device_map else {}
    if config_overrides:
        config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        for key, value in config_overrides.items():
            setattr(config, key, value)
        extra["config"] = config
    cls = getattr(transformers, auto_class)
    model = cls.from_pretrained(path, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code, **extra)
    model = model.eval()
    return model if device_map else model.to(device)


def masked_mean(hidden: Any, mask: Any) -> Any:
    """Mean of ``hidden`` (B, T, d) over the positions where ``mask`` (B, T) is nonzero, in float32: (B, d)."""
    m = mask.to(hidden.device).unsqueeze(-1).float()
    return (hidden.float() * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


def length_sorted_chunks(lengths: Sequence[int], budget: int = PADDED_CHARS_PER_CHUNK) -> list[list[int]]:
    """Input indices in ascending-length chunks whose padded size (rows × longest length) stays within ``budget``
    (every chunk holds at least one input)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    chunks: list[list[int]] = []
    for i in order:
        if chunks and (len(chunks[-1]) + 1) * lengths[i] <= budget:
            chunks[-1].append(i)
        else:
            chunks.append([i])
    return chunks


def encode_by_length(encode: Callable[[list[str]], Any], texts: Sequence[str], budget: int = PADDED_CHARS_PER_CHUNK):
    """``encode(texts)`` (a (n, d) torch tensor) run on length-sorted chunks and returned in input order.

    A padded batch costs rows × longest input, so one long input (a crystal's XYZ text among SMILES-sized molecules)
    would make a whole batch slower than one input at a time; sorting by length first is what
    ``SentenceTransformer.encode`` does too. Each row depends only on its own input (padding is masked), so the
    result equals one padded batch up to float rounding.
    """
    import torch

    chunks = length_sorted_chunks([len(t) for t in texts], budget)
    parts = [encode([texts[i] for i in chunk]) for chunk in chunks]
    order = torch.tensor([i for chunk in chunks for i in chunk])
    return torch.cat(parts)[torch.argsort(order)]


#: The layer name of a transformer's k-th hidden state (``LAYERS`` entry of every transformers family).
HIDDEN_LAYER = "hidden<k>"
_HIDDEN = re.compile(r"^hidden(\d+)$")


def hidden_layer(spec_id: str, layer: str, layers: dict[str, str]) -> int | None:
    """The hidden-state index a transformers family reads for ``layer``: None for ``"last"`` (the model's
    ``last_hidden_state``), ``k`` for ``"hidden<k>"`` (``hidden_states[k]``: 0 the token embeddings, k the output of
    block k); ValueError naming ``layers`` otherwise. :func:`check_hidden_layer` bounds k once the model is loaded."""
    if layer == "last":
        return None
    match = _HIDDEN.match(str(layer))
    if match is None:
        offered = "; ".join(f"{name!r}: {what}" for name, what in layers.items())
        raise ValueError(f"{spec_id} offers layer {offered}; got layer={layer!r}.")
    return int(match.group(1))


def check_hidden_layer(spec_id: str, index: int | None, model: Any) -> None:
    """ValueError when ``hidden<index>`` is past the loaded ``model``'s blocks (``hidden_states`` holds the
    embeddings and one entry per block: indices 0 … number of blocks)."""
    if index is None:
        return
    config = model.config
    blocks = getattr(config, "num_hidden_layers", None) or getattr(config, "num_layers", None)
    if blocks is not None and index > int(blocks):
        raise ValueError(f"{spec_id} has {blocks} blocks: layer hidden<k> takes k from 0 to {blocks}, got {index}.")


def hidden_state(model: Any, index: int | None, **inputs: Any) -> Any:
    """The (batch, tokens, d) hidden state ``model(**inputs)`` gives at ``index`` (:func:`hidden_layer`): its
    ``last_hidden_state`` for None, else ``hidden_states[index]``. Call under ``torch.no_grad()``."""
    out = model(**inputs, output_hidden_states=index is not None)
    return out.last_hidden_state if index is None else out.hidden_states[index]
