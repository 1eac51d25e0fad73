"""General-purpose LLMs as encoders of molecules (seed 000 §5 and App. B): DeepSeek-R1 distilled onto Llama 8B
(DeepSeek-AI 2025, arXiv:2501.12948), Qwen3 30B-A3B Thinking 2507 (Yang et al. 2025, arXiv:2505.09388) and
gpt-oss-20b (OpenAI 2025, arXiv:2508.10925), through Hugging Face ``transformers``.

Each LLM comes in seed 000's three variants (its Table 1 and Fig. C6):

- ``<llm>``: :data:`DEFAULT_SYSTEM_PROMPT`, user message ``"SMILES: <canonical SMILES>"``;
- ``<llm>-blank``: :data:`BLANK_SYSTEM_PROMPT`, the same user message;
- ``<llm>-blank-atomistic``: :data:`BLANK_SYSTEM_PROMPT`, user message :func:`atomistic_text` (an ASE readout).

The conversation (system + user message) goes through the model's own chat template with the generation prompt
appended — the input the model would generate from; seed 000 App. B.4: embeddings are "extracted from the last
hidden states output, before autoregressive generation". Embedding: the base model's ``last_hidden_state``, mean
over every token of that templated input (system prompt, user message and template tokens). Batches are
right-padded with an attention mask, so a padded batch embeds each input as it would alone.

Chat templates that print today's date (gpt-oss's does) see the fixed :data:`TEMPLATE_DATE` instead, so an
embedding does not depend on the day it was extracted (``--opt template_date=YYYY-MM-DD`` changes it).

Weights: ``--opt weights=PATH`` (a local snapshot directory) or the Hub id below (local Hugging Face cache);
``--opt dtype=bfloat16``, ``--opt device=cuda``, ``--opt device_map=auto`` (several GPUs, needs ``accelerate``).
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator, Sequence
from typing import Any
from unittest import mock

import numpy as np

from extractors.base import WEIGHTS_PATH, Embedded, Extractor, ModelSpec
from extractors.datasets import Record
from extractors.models._hf import (
    HIDDEN_LAYER,
    check_hidden_layer,
    encode_by_length,
    hidden_layer,
    hidden_state,
    load_model,
    load_tokenizer,
    masked_mean,
    resolve_weights,
)
from extractors.models.hf_chem import model_inputs

__all__ = [
    "ATOMISTIC_PREFIX",
    "BLANK_SYSTEM_PROMPT",
    "DEFAULT_SYSTEM_PROMPT",
    "LAYERS",
    "SMILES_PREFIX",
    "SPECS",
    "SYSTEM_PROMPTS",
    "TEMPLATE_DATE",
    "LLMExtractor",
    "atomistic_text",
    "build",
    "conversation",
    "frozen_template_clock",
]

#: The layers this family reads (``layer=`` / ``MODEL@LAYER``); ``last`` is the default, the one the papers use.
LAYERS = {
    "last": "last hidden state, mean over the input's tokens",
    HIDDEN_LAYER: "hidden state k (0 = token embeddings … number of blocks), mean over the input's tokens",
}

#: Seed 000 App. B.2, "Default System Prompt" (line breaks as rendered in the paper; its PDF does not preserve
#: the exact whitespace).
DEFAULT_SYSTEM_PROMPT = """You are a domain-agnostic scientific encoder.
Your role is to interpret inputs such as:
- Small molecules described as SMILES or SELFIES strings,
- Proteins described as amino acid sequences,
- Materials described as normalized structural text (formula, space group, lattice parameters, and fractional \
coordinates).
You must focus only on the chemical, structural, and biological meaning of the inputs.
Do not generate explanations, commentary, or unrelated text.
Instead, represent the inputs in a consistent and semantically meaningful latent space, where structurally similar \
molecules, proteins, and materials map to nearby embeddings.
Your interpretation should:
- Treat SMILES/SELFIES as molecular graphs,
- Treat protein sequences as biopolymers with ordered residues,
- Treat material schemas as periodic crystals with lattice + sites,
- Ignore formatting differences (whitespace, capitalization, punctuation) that don't affect meaning,
- Emphasize underlying chemistry, composition, and structure.
Output should remain in hidden state embeddings only, not text."""

#: Seed 000 App. B.2, the "Blank" system prompt (its first sentence alone).
BLANK_SYSTEM_PROMPT = "You are a domain-agnostic scientific encoder."

SYSTEM_PROMPTS = {"default": DEFAULT_SYSTEM_PROMPT, "blank": BLANK_SYSTEM_PROMPT}

#: Seed 000 App. B.3: the user message of the SMILES variants is ``SMILES: <smiles>``.
SMILES_PREFIX = "SMILES: "
#: Seed 000 App. B.3: the user message of the "Atomistic" variant starts with this, followed by the ASE readout.
ATOMISTIC_PREFIX = "Molecule ASE atoms positions and information: "

#: The date shown to chat templates that print today's date (see the module docstring).
TEMPLATE_DATE = "2025-11-01"

_PACKAGES = ("transformers", "tokenizers", "torch", "rdkit")
_LLMS = (
    ("deepseek-r1-llama-8b", "deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "DeepSeek-R1 distilled onto Llama 8B"),
    ("qwen3-30b-a3b-thinking", "Qwen/Qwen3-30B-A3B-Thinking-2507", "Qwen3 30B-A3B Thinking 2507 (MoE)"),
    ("gpt-oss-20b", "openai/gpt-oss-20b", "gpt-oss-20b (MoE)"),
)
_VARIANTS = (
    ("", "default", "smiles", "default system prompt, SMILES"),
    ("-blank", "blank", "smiles", "blank system prompt, SMILES"),
    ("-blank-atomistic", "blank", "atomistic", "blank system prompt, ASE Atoms readout"),
)
SPECS = tuple(
    ModelSpec(
        f"{mid}{suffix}",
        "hf_llm",
        {"hub_id": hub, "prompt": prompt, "input": kind},
        WEIGHTS_PATH,
        _PACKAGES,
        f"{desc}; {vdesc}",
    )
    for mid, hub, desc in _LLMS
    for suffix, prompt, kind, vdesc in _VARIANTS
)


def atomistic_text(atoms: Any) -> str:
    """Seed 000's "Atomistic" user message (App. B.3): the prefix, the ``repr`` of the ``Atoms`` and its
    ``numbers``, ``positions``, ``cell`` and ``pbc`` as Python lists, e.g. ``Molecule ASE atoms positions and
    information: Atoms(symbols='OH2', pbc=False) 'numbers': [8, 1, 1], 'positions': [[0.0, 0.0, 0.119262], ...],
    'cell': [[0.0, 0.0, 0.0], ...], 'pbc': [False, False, False]``. Only those fields are rendered (no calculator,
    constraint or info), so the text is a function of the structure alone."""
    from ase import Atoms

    bare = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    fields = {
        "numbers": bare.numbers.tolist(),
        "positions": bare.positions.tolist(),
        "cell": np.asarray(bare.cell).tolist(),
        "pbc": bare.pbc.tolist(),
    }
    return f"{ATOMISTIC_PREFIX}{bare!r} " + ", ".join(f"{k!r}: {v}" for k, v in fields.items())


def conversation(text: str, prompt: str) -> list[dict[str, str]]:
    """The chat messages for one input: ``prompt`` ("default", "blank" or a literal system prompt) and ``text``."""
    system = SYSTEM_PROMPTS.get(prompt, prompt)
    return [{"role": "system", "content": system}, {"role": "user", "content": text}]


@contextlib.contextmanager
def frozen_template_clock(date: str) -> Iterator[None]:
    """Within the block, chat templates' ``strftime_now`` (transformers' Jinja global, which reads
    ``datetime.now()`` in ``transformers.utils.chat_template_utils``) returns ``date`` (ISO ``YYYY-MM-DD``, at
    midnight). Template variables cannot override it: transformers renders keyword arguments as plain data."""
    from transformers.utils import chat_template_utils

    day = datetime.date.fromisoformat(date)

    class _Frozen(datetime.datetime):
        @classmethod
        def now(cls, tz: Any = None) -> datetime.datetime:
            return datetime.datetime(day.year, day.month, day.day, tzinfo=tz)

    if not hasattr(chat_template_utils, "datetime"):
        raise RuntimeError("transformers.utils.chat_template_utils no longer reads `datetime`: update hf_llm")
    with mock.patch.object(chat_template_utils, "datetime", _Frozen):
        yield


class LLMExtractor(Extractor):
    pooling = "mean over all tokens (chat template, system prompt and input) of the last hidden state"

    def __init__(
        self,
        spec: ModelSpec,
        *,
        layer: str = "last",
        device: str = "cpu",
        weights: str | None = None,
        dtype: str = "auto",
        device_map: str | None = None,
        prompt: str | None = None,
        input: str | None = None,
        max_length: int = 8192,
        template_date: str = TEMPLATE_DATE,
    ) -> None:
        self.hidden = hidden_layer(spec.id, layer, LAYERS)
        prompt = prompt or spec.config["prompt"]
        input = input or spec.config["input"]
        if input not in ("smiles", "atomistic"):
            raise ValueError(f"`input` must be 'smiles' or 'atomistic', got {input!r}.")
        try:
            datetime.date.fromisoformat(template_date)
        except (TypeError, ValueError):
            raise ValueError(f"`template_date` must be an ISO date YYYY-MM-DD, got {template_date!r}.") from None
        super().__init__(
            spec,
            layer=layer,
            device=device,
            dtype=dtype,
            device_map=device_map,
            prompt=prompt,
            input=input,
            max_length=max_length,
            template_date=template_date,
        )
        self.path = resolve_weights(weights, spec.config["hub_id"])
        self.tokenizer = load_tokenizer(self.path)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"tokenizer at {self.path} has no chat template; cannot place the system prompt.")
        self.model = load_model(self.path, dtype=dtype, device=device, device_map=device_map)
        check_hidden_layer(spec.id, self.hidden, self.model)
        self.prompt = prompt
        self.input = input
        self.max_length = int(max_length)
        self.template_date = template_date
        self.needs = "smiles" if input == "smiles" else "text"  # type: ignore[misc]

    def check(self, record: Record) -> str | None:
        if self.input == "smiles":
            return None if (record.smiles or record.atoms is not None) else "record has neither SMILES nor 3D structure"
        return super().check(record)

    def user_text(self, record: Record) -> str:
        if self.input == "smiles":
            return SMILES_PREFIX + model_inputs(record, input="smiles", canonical=True)
        return atomistic_text(record.atoms)

    def render(self, text: str) -> str:
        """The templated conversation (a string; its special tokens are in the text)."""
        with frozen_template_clock(self.template_date):
            return self.tokenizer.apply_chat_template(
                conversation(text, self.prompt), tokenize=False, add_generation_prompt=True
            )

    def encode(self, texts: Sequence[str]) -> Any:
        """(n, d) float32 torch tensor: token mean of the last hidden state over each templated input
        (length-sorted sub-batches)."""
        return encode_by_length(self._encode_padded, [self.render(t) for t in texts])

    def _encode_padded(self, rendered: list[str]) -> Any:
        import torch

        enc = self.tokenizer(
            rendered,
            add_special_tokens=False,  # the chat template writes BOS and the role tokens itself
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        device = self.model.device
        ids = enc["input_ids"].to(device)
        mask = enc["attention_mask"].to(device)
        with torch.no_grad():
            hidden = hidden_state(self.model, self.hidden, input_ids=ids, attention_mask=mask)
        return masked_mean(hidden, mask)

    def embed(self, records: Sequence[Record]) -> list[Embedded]:
        vectors = self.encode([self.user_text(r) for r in records]).cpu().numpy()
        return [Embedded(features=v) for v in vectors]

    def info(self) -> dict[str, Any]:
        return {
            "weights": self.path,
            "prompt": self.prompt,
            "system_prompt": SYSTEM_PROMPTS.get(self.prompt, self.prompt),
            "input": self.input,
            "max_length": self.max_length,
            "template_date": self.template_date,
            "hidden_size": int(self.model.config.hidden_size),
        }


def build(spec: ModelSpec, **options: Any) -> LLMExtractor:
    return LLMExtractor(spec, **options)
