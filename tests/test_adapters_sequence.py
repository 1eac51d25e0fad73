"""Sequence and language-model adapters, each on a tiny randomly initialised model of the real architecture.

Weights cannot be downloaded here, so every test builds a tiny model of the architecture the real checkpoint uses
(RoBERTa for ChemBERTa, GPT-Neo for ChemGPT, T5 for ProstT5, Llama / Qwen3-MoE / gpt-oss for the LLMs, fair-esm's
ESM2 and GVP-Transformer, EvolutionaryScale's ESMC and ESM3), saves it in the format the adapter's real loading
code reads (``save_pretrained`` directory, fair-esm ``.pt`` checkpoint, ``esm`` state dict) and loads it through
the adapter. Checks: shapes, finite values, the pooled features equal to a manual computation with the library's
own forward (one input at a time, so padded batching is checked too), and the input conventions (canonical SMILES,
system prompts, residue positions).

fair-esm and ``esm`` (ESM3/ESMC) both install the import name ``esm`` and cannot share an environment: their tests
run this file under their own interpreters, ``$JAXALIGN_ENVS/{fair-esm,esm3}/bin/python`` (default
``/work/venvs``), and skip with the reason when that interpreter is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ENVS = Path(os.environ.get("JAXALIGN_ENVS", "/work/venvs"))
ATOL = 1e-5  # adapter (padded batch) vs the library's forward on one unpadded input, float32

SMILES_CORPUS = ["CCO", "c1ccccc1", "CC(=O)O", "C1CCCCC1", "O=C=O", "N#N", "CCN(CC)CC", "OCC", "[nH]1cccc1"]


# --------------------------------------------------------------------------------------------------- helpers
def _byte_bpe(corpus: list[str], specials: list[str], post: str | None = None):
    """A small byte-level BPE tokenizer (tokenizers library), optionally with a ``<s> $A </s>`` post-processor."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=specials[-1]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    if post is not None:
        bos, eos = post.split()
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A {eos}", special_tokens=[(bos, tok.token_to_id(bos)), (eos, tok.token_to_id(eos))]
        )
    return tok


def _fast_tokenizer(tok, **special):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=512, **special)


def _manual_mean(hidden, drop_first: int = 0, drop_last: int = 0) -> np.ndarray:
    """Mean over the token axis of one unpadded (1, T, d) hidden state, without its first/last positions."""
    h = hidden[0].float().numpy()
    return h[drop_first : h.shape[0] - drop_last].mean(axis=0)


def _records():
    from ase.build import molecule

    from extractors import Record

    water = molecule("H2O")
    return [
        Record(id="ethanol", smiles="CCO"),
        Record(id="ethanol-noncanonical", smiles="OCC"),
        Record(id="benzene", smiles="c1ccccc1"),
        Record(id="water-3d", atoms=water),  # SMILES derived from the structure
    ]


# --------------------------------------------------------------------------------------------------- ChemBERTa
@pytest.fixture(scope="module")
def chemberta_dir(tmp_path_factory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("rdkit")
    path = tmp_path_factory.mktemp("chemberta")
    torch.manual_seed(0)
    specials = ["<pad>", "<s>", "</s>", "<mask>", "<unk>"]
    tok = _fast_tokenizer(
        _byte_bpe(SMILES_CORPUS, specials, post="<s> </s>"),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        mask_token="<mask>",
        unk_token="<unk>",
    )
    config = transformers.RobertaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=66,
        pad_token_id=tok.pad_token_id,
    )
    transformers.RobertaForMaskedLM(config).save_pretrained(path)  # ChemBERTa-2's checkpoint class
    tok.save_pretrained(path)
    return path


def _roberta_reference(path, texts, index=-1):
    import torch
    from transformers import AutoTokenizer, RobertaForMaskedLM

    tok = AutoTokenizer.from_pretrained(path)
    model = RobertaForMaskedLM.from_pretrained(path).eval()
    out = []
    for t in texts:
        enc = tok(t, return_tensors="pt")
        with torch.no_grad():
            out.append(_manual_mean(model(**enc, output_hidden_states=True).hidden_states[index]))
    return np.stack(out)


def test_chemberta(chemberta_dir):
    from extractors.models import hf_chem
    from extractors.registry import get_spec

    ext = hf_chem.build(get_spec("chemberta-77m-mlm"), weights=str(chemberta_dir))
    records = _records()
    emb = ext.embed(records)
    feats = np.stack([e.features for e in emb])
    assert feats.shape == (4, 32) and feats.dtype == np.float32 and np.isfinite(feats).all()
    texts = ext.texts(records)
    assert texts[:3] == ["CCO", "CCO", "c1ccccc1"] and texts[3] == "O"  # canonical; water from 3D
    np.testing.assert_allclose(feats, _roberta_reference(chemberta_dir, texts), atol=ATOL)
    np.testing.assert_array_equal(feats[0], feats[1])  # OCC canonicalised to CCO
    assert not np.allclose(feats[0], feats[2])
    assert ext.info()["hidden_size"] == 32 and ext.info()["weights"] == str(chemberta_dir)


def test_chemberta_bad_smiles(chemberta_dir):
    from extractors import Record
    from extractors.models import hf_chem
    from extractors.registry import get_spec

    ext = hf_chem.build(get_spec("chemberta-77m-mlm"), weights=str(chemberta_dir))
    with pytest.raises(ValueError, match="RDKit cannot parse"):
        ext.embed([Record(id="bad", smiles="C1CC(")])
    assert ext.check(Record(id="empty")) is not None


def test_transformer_hidden_layers(chemberta_dir, prostt5_dir, llm_dir):
    """``hidden<k>`` of every transformers family: the library's ``hidden_states[k]`` under the family's pooling
    (k = 1 against RoBERTa's own output), equal to ``last`` at k = number of blocks, different at k = 0; k past the
    blocks and unknown layer names are errors naming the choices."""
    from extractors import Record
    from extractors.models import hf_chem, hf_llm, prostt5
    from extractors.registry import get_spec

    records = _records()
    chem = get_spec("chemberta-77m-mlm")
    last = np.stack([e.features for e in hf_chem.build(chem, weights=str(chemberta_dir)).embed(records)])
    first = hf_chem.build(chem, weights=str(chemberta_dir), layer="hidden1")
    feats = np.stack([e.features for e in first.embed(records)])
    np.testing.assert_allclose(feats, _roberta_reference(chemberta_dir, first.texts(records), index=1), atol=ATOL)
    top = hf_chem.build(chem, weights=str(chemberta_dir), layer="hidden2")
    np.testing.assert_allclose(np.stack([e.features for e in top.embed(records)]), last, atol=ATOL)
    assert not np.allclose(feats, last, atol=1e-3)
    with pytest.raises(ValueError, match=r"has 2 blocks: layer hidden<k> takes k from 0 to 2, got 3"):
        hf_chem.build(chem, weights=str(chemberta_dir), layer="hidden3")
    with pytest.raises(ValueError, match=r"offers layer 'last': .*'hidden<k>'.*got layer='backbone'"):
        hf_chem.build(chem, weights=str(chemberta_dir), layer="backbone")

    proteins = [Record(id="a", sequence="MKTAYIAKQR"), Record(id="c", sequence="MKTAYIAKQRQISFVKSHFSRQ")]
    spec = get_spec("prostt5")
    out = {
        layer: np.stack(
            [e.features for e in prostt5.build(spec, weights=str(prostt5_dir), layer=layer).embed(proteins)]
        )
        for layer in ("last", "hidden2", "hidden0")
    }
    np.testing.assert_allclose(out["hidden2"], out["last"], atol=ATOL)
    assert not np.allclose(out["hidden0"], out["last"], atol=1e-3)

    llm = get_spec("deepseek-r1-llama-8b")
    a, b = (
        np.stack([e.features for e in hf_llm.build(llm, weights=str(llm_dir), dtype="float32", layer=x).embed(records)])
        for x in ("last", "hidden2")
    )
    np.testing.assert_allclose(b, a, atol=ATOL)


def test_runner_writes_language_model_file(chemberta_dir, tmp_path):
    """A text model through the runner: file rows equal the adapter's features, no per-atom arrays."""
    from extractors import run_extraction
    from extractors.embedding_file import read_npz
    from extractors.models import hf_chem
    from extractors.registry import get_spec

    ext = hf_chem.build(get_spec("chemberta-77m-mlm"), weights=str(chemberta_dir))
    records = _records()
    path = run_extraction(
        "chemberta-77m-mlm", "inline", tmp_path, extractor=ext, records=records, batch_size=3, progress=False
    )
    data = read_npz(path)
    meta = json.loads(str(data["meta"]))
    assert list(data["structure_ids"]) == [r.id for r in records] and "atom_features" not in data
    np.testing.assert_allclose(data["features"], np.stack([e.features for e in ext.embed(records)]), atol=1e-6)
    assert meta["model_info"]["weights"] == str(chemberta_dir) and "mean over tokens" in meta["pooling"]


# --------------------------------------------------------------------------------------------------- MoLFormer
_STANDIN_CODE = """
from transformers import RobertaConfig, RobertaModel


class StandinConfig(RobertaConfig):
    model_type = "jaxalign-standin"


class StandinModel(RobertaModel):
    config_class = StandinConfig
"""


def test_molformer_remote_code_path(chemberta_dir, tmp_path):
    """MoLFormer's architecture is code inside its checkpoint (``trust_remote_code``), not in transformers: this
    checks the adapter's remote-code path (``auto_map`` → code file in the snapshot, ``deterministic_eval``
    forwarded) on a stand-in RoBERTa written as remote code, since MoLFormer's own code cannot be fetched here."""
    import shutil

    from extractors.models import hf_chem
    from extractors.registry import get_spec

    path = tmp_path / "molformer"
    shutil.copytree(chemberta_dir, path)
    (path / "standin.py").write_text(_STANDIN_CODE)
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(
        model_type="jaxalign-standin",
        auto_map={"AutoConfig": "standin.StandinConfig", "AutoModel": "standin.StandinModel"},
    )
    (path / "config.json").write_text(json.dumps(cfg))
    ext = hf_chem.build(get_spec("molformer-xl"), weights=str(path))
    assert type(ext.model).__name__ == "StandinModel" and ext.model.config.deterministic_eval is True
    records = _records()[:3]
    feats = np.stack([e.features for e in ext.embed(records)])
    np.testing.assert_allclose(feats, _roberta_reference(chemberta_dir, ext.texts(records)), atol=ATOL)


# --------------------------------------------------------------------------------------------------- ChemGPT
def test_chemgpt(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    selfies = pytest.importorskip("selfies", reason="ChemGPT reads SELFIES: needs the `selfies` package")
    from extractors.models import hf_chem
    from extractors.registry import get_spec

    corpus = [selfies.encoder(s) for s in SMILES_CORPUS]
    tok = _fast_tokenizer(_byte_bpe(corpus, ["[PAD]", "[CLS]", "[SEP]", "[UNK]"]), pad_token="[PAD]")
    torch.manual_seed(1)
    config = transformers.GPTNeoConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        attention_types=[[["global", "local"], 1]],
        window_size=8,
        max_position_embeddings=128,
    )
    transformers.GPTNeoForCausalLM(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    ext = hf_chem.build(get_spec("chemgpt-4.7m"), weights=str(tmp_path))
    records = _records()
    texts = ext.texts(records)
    assert texts[0] == selfies.encoder("CCO") == texts[1]
    feats = np.stack([e.features for e in ext.embed(records)])
    assert feats.shape == (4, 32) and np.isfinite(feats).all()
    model = transformers.GPTNeoForCausalLM.from_pretrained(tmp_path).eval()
    ref = []
    for t in texts:
        with torch.no_grad():
            ref.append(_manual_mean(model(**tok(t, return_tensors="pt"), output_hidden_states=True).hidden_states[-1]))
    np.testing.assert_allclose(feats, np.stack(ref), atol=ATOL)


# --------------------------------------------------------------------------------------------------- ProstT5
AMINO = "ACDEFGHIKLMNPQRSTVWXY"


@pytest.fixture(scope="module")
def prostt5_dir(tmp_path_factory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    path = tmp_path_factory.mktemp("prostt5")
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("▁" + a, -1.0) for a in AMINO] + [("▁" + a.lower(), -1.0) for a in AMINO] + [("▁", -5.0)]
    tok = transformers.T5Tokenizer(vocab=vocab, extra_ids=0, additional_special_tokens=["<AA2fold>", "<fold2AA>"])
    torch.manual_seed(2)
    config = transformers.T5Config(
        vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, decoder_start_token_id=0
    )
    transformers.T5ForConditionalGeneration(config).save_pretrained(path)  # ProstT5's checkpoint class
    tok.save_pretrained(path)
    return path


def test_prostt5(prostt5_dir):
    import torch
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    from extractors import Record
    from extractors.models import prostt5
    from extractors.registry import get_spec

    records = [
        Record(id="a", sequence="MKTAYIAKQR"),
        Record(id="b", sequence="GSHMU"),  # U → X
        Record(id="c", sequence="MKTAYIAKQRQISFVKSHFSRQ"),
    ]
    ext = prostt5.build(get_spec("prostt5"), weights=str(prostt5_dir))
    assert ext.check(Record(id="none")) is not None and ext.check(records[0]) is None
    feats = np.stack([e.features for e in ext.embed(records)])
    assert feats.shape == (3, 32) and np.isfinite(feats).all()
    assert prostt5.model_input("GSHMU") == "<AA2fold> G S H M X"
    tok = AutoTokenizer.from_pretrained(prostt5_dir)
    model = T5ForConditionalGeneration.from_pretrained(prostt5_dir).eval()
    ref = []
    for r in records:
        enc = tok(prostt5.model_input(r.sequence), return_tensors="pt")
        assert enc["input_ids"].shape[1] == len(r.sequence) + 2
        with torch.no_grad():
            hidden = model.encoder(**enc).last_hidden_state
        ref.append(_manual_mean(hidden, drop_first=1, drop_last=1))  # residues only: no prefix, no </s>
    np.testing.assert_allclose(feats, np.stack(ref), atol=ATOL)
    short = prostt5.build(get_spec("prostt5"), weights=str(prostt5_dir), max_residues=10)
    np.testing.assert_allclose(short.embed(records[2:])[0].features, feats[0], atol=ATOL)  # same first 10 residues


def test_prostt5_3di(prostt5_dir, tmp_path):
    """seed 000's "ProstT5 Structure": the 3Di string equals mini3di's own encoding of the Biopython chain, and the
    features equal the encoder on ``<fold2AA>`` + the lower-case 3Di letters."""
    import mini3di
    import torch
    from Bio.PDB import PDBParser
    from protein_files import helix_pdb
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    from extractors import Record
    from extractors.datasets import read_pdb
    from extractors.models import prostt5
    from extractors.registry import get_spec

    pdb = helix_pdb(tmp_path / "2hlx.pdb")
    records = read_pdb(pdb)
    encoder = mini3di.Encoder()
    structure = PDBParser(QUIET=True).get_structure("2hlx", str(pdb))
    for record, chain in zip(records, structure[0], strict=True):
        want = encoder.build_sequence(encoder.encode_chain(chain))
        assert prostt5.three_di(record) == want and len(want) == len(record.sequence)
    ext = prostt5.build(get_spec("prostt5-3di"), weights=str(prostt5_dir))
    assert "N/CA/C/CB" in ext.check(Record(id="s", sequence="MK")) and ext.check(records[0]) is None
    feats = np.stack([e.features for e in ext.embed(records)])
    tok = AutoTokenizer.from_pretrained(prostt5_dir)
    model = T5ForConditionalGeneration.from_pretrained(prostt5_dir).eval()
    ref = []
    for r in records:
        text = prostt5.model_input(prostt5.three_di(r), kind="3di")
        assert text.startswith("<fold2AA> ") and text[10:] == text[10:].lower()
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            ref.append(_manual_mean(model.encoder(**enc).last_hidden_state, drop_first=1, drop_last=1))
    np.testing.assert_allclose(feats, np.stack(ref), atol=ATOL)
    sequence = prostt5.build(get_spec("prostt5"), weights=str(prostt5_dir)).embed(records)[0].features
    assert not np.allclose(sequence, feats[0])  # the structure tokens, not the sequence, went in


# --------------------------------------------------------------------------------------------------- LLMs
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
    "{% if m['role'] == 'system' %} Current date: {{ strftime_now('%Y-%m-%d') }}{% endif %}{{ eos_token }}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _llm_config(arch: str, vocab: int):
    import transformers

    common = {"vocab_size": vocab, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}
    common |= {"num_key_value_heads": 2, "max_position_embeddings": 4096}
    if arch == "llama":  # DeepSeek-R1-Distill-Llama-8B
        return transformers.LlamaConfig(intermediate_size=64, **common), transformers.LlamaForCausalLM
    if arch == "qwen3_moe":  # Qwen3-30B-A3B
        cfg = transformers.Qwen3MoeConfig(
            intermediate_size=64, moe_intermediate_size=16, num_experts=4, num_experts_per_tok=2, head_dim=8, **common
        )
        return cfg, transformers.Qwen3MoeForCausalLM
    cfg = transformers.GptOssConfig(  # gpt-oss-20b
        intermediate_size=32, num_local_experts=4, num_experts_per_tok=2, head_dim=8, sliding_window=16, **common
    )
    return cfg, transformers.GptOssForCausalLM


@pytest.fixture(scope="module", params=["llama", "qwen3_moe", "gpt_oss"])
def llm_dir(request, tmp_path_factory):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("rdkit")
    from extractors.models import hf_llm

    path = tmp_path_factory.mktemp(f"llm-{request.param}")
    corpus = [hf_llm.DEFAULT_SYSTEM_PROMPT, "SMILES: CCO", "Atoms(symbols='OH2', pbc=False) 'numbers': [8, 1, 1]"]
    specials = ["<|pad|>", "<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>", "<|unk|>"]
    tok = _fast_tokenizer(_byte_bpe(corpus, specials), bos_token="<|bos|>", eos_token="<|eos|>", unk_token="<|unk|>")
    tok.chat_template = CHAT_TEMPLATE  # no pad token: the adapter pads with EOS, as for Llama checkpoints
    torch.manual_seed(3)
    config, cls = _llm_config(request.param, len(tok))
    cls(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _llm_reference(path, rendered: list[str]) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    out = []
    for text in rendered:
        enc = tok(text, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            out.append(_manual_mean(model(**enc, output_hidden_states=True).hidden_states[-1]))
    return np.stack(out)


def test_llm_prompts_and_pooling(llm_dir):
    from extractors.models import hf_llm
    from extractors.registry import get_spec

    records = _records()
    default = hf_llm.build(get_spec("deepseek-r1-llama-8b"), weights=str(llm_dir), dtype="float32")
    blank = hf_llm.build(get_spec("deepseek-r1-llama-8b-blank"), weights=str(llm_dir), dtype="float32")
    assert default.tokenizer.pad_token == "<|eos|>"
    feats = {}
    for name, ext in (("default", default), ("blank", blank)):
        texts = [ext.user_text(r) for r in records]
        assert texts[0] == texts[1] == "SMILES: CCO" and texts[3] == "SMILES: O"
        rendered = [ext.render(t) for t in texts]
        assert all(hf_llm.SYSTEM_PROMPTS[name] + " Current date: 2025-11-01" in r for r in rendered)
        assert rendered[0].startswith("<|bos|><|system|>") and rendered[0].endswith("<|assistant|>")
        feats[name] = np.stack([e.features for e in ext.embed(records)])
        assert feats[name].shape == (4, 32) and np.isfinite(feats[name]).all()
        np.testing.assert_allclose(feats[name], _llm_reference(llm_dir, rendered), atol=ATOL)
    assert not np.allclose(feats["default"], feats["blank"], atol=1e-3)
    assert hf_llm.BLANK_SYSTEM_PROMPT == hf_llm.DEFAULT_SYSTEM_PROMPT.splitlines()[0]
    later = hf_llm.build(
        get_spec("deepseek-r1-llama-8b"), weights=str(llm_dir), dtype="float32", template_date="2026-01-01"
    )
    assert not np.allclose(later.embed(records[:1])[0].features, feats["default"][0], atol=1e-6)


def test_llm_atomistic(llm_dir):
    from ase.build import bulk, molecule

    from extractors import Record
    from extractors.models import hf_llm
    from extractors.registry import get_spec

    water = molecule("H2O")
    text = hf_llm.atomistic_text(water)
    assert text.startswith("Molecule ASE atoms positions and information: Atoms(symbols='OH2', pbc=False) 'numbers':")
    assert "'numbers': [8, 1, 1], 'positions': [[0.0, 0.0, 0.119262]" in text
    assert text.endswith("'cell': [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], 'pbc': [False, False, False]")
    moved = water.copy()
    moved.positions[0, 2] += 0.1
    records = [Record(id="w", atoms=water), Record(id="w2", atoms=moved), Record(id="si", atoms=bulk("Si"))]
    ext = hf_llm.build(get_spec("gpt-oss-20b-blank-atomistic"), weights=str(llm_dir), dtype="float32")
    assert ext.needs == "text" and ext.check(Record(id="smiles-only", smiles="C")) is not None
    feats = np.stack([e.features for e in ext.embed(records)])
    assert feats.shape == (3, 32) and np.isfinite(feats).all()
    rendered = [ext.render(ext.user_text(r)) for r in records]
    np.testing.assert_allclose(feats, _llm_reference(llm_dir, rendered), atol=ATOL)
    assert not np.allclose(feats[0], feats[1], atol=1e-6)


def test_llm_bad_options(llm_dir):
    from extractors.models import hf_llm
    from extractors.registry import get_spec

    spec = get_spec("qwen3-30b-a3b-thinking")
    with pytest.raises(ValueError, match="`input`"):
        hf_llm.build(spec, weights=str(llm_dir), input="xyz")
    with pytest.raises(ValueError, match="`template_date`"):
        hf_llm.build(spec, weights=str(llm_dir), template_date="yesterday")
    with pytest.raises(ValueError, match="`dtype`"):
        hf_llm.build(spec, weights=str(llm_dir), dtype="float64")


def test_registry_lists_sequence_families():
    from extractors.base import SEPARATE_ENV, WEIGHTS_PATH
    from extractors.registry import FAMILIES, specs

    table = specs()
    for family in ("hf_chem", "hf_llm", "prostt5", "fair_esm", "esm3"):
        assert family in FAMILIES
    assert "_hf" not in FAMILIES
    for model in ("chemberta-77m-mlm", "molformer-xl", "chemgpt-1.2b", "prostt5", "gpt-oss-20b-blank-atomistic"):
        assert table[model].status == WEIGHTS_PATH
    for model in ("esm2-t33-650m", "esm-if1", "esmc-300m", "esm3-sequence", "esm3-structure"):
        assert table[model].status == SEPARATE_ENV
    assert len([m for m in table if table[m].family == "hf_llm"]) == 9


# --------------------------------------------------------------------------------------------------- separate envs
def _env_python(family: str) -> Path | None:
    """The family's interpreter: extractors.envs' environment, else ``$JAXALIGN_ENVS/<family>`` (or /work/venvs)."""
    try:
        from extractors.envs import find_python

        found = find_python(family)
    except ImportError:
        found = None
    if found is not None:
        return found
    python = ENVS / family / "bin" / "python"
    return python if python.exists() else None


SKIP = 77  # exit code of an in-environment check that cannot run (reason on its last stdout line)


def _run_in_env(family: str, check: str, tmp_path: Path) -> None:
    python = _env_python(family)
    if python is None:
        pytest.skip(f"no {family} environment (python -m extractors.envs create {family}, or $JAXALIGN_ENVS/{family})")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [str(python), __file__, check, str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    if done.returncode == SKIP:
        pytest.skip(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0, f"{check} failed under {python}:\n{done.stdout}\n{done.stderr[-4000:]}"


def test_esm2(tmp_path):
    _run_in_env("fair_esm", "esm2", tmp_path)


def test_esm_if1(tmp_path):
    _run_in_env("fair_esm", "esm_if1", tmp_path)


def test_esmc(tmp_path):
    _run_in_env("esm3", "esmc", tmp_path)


def test_esm3(tmp_path):
    _run_in_env("esm3", "esm3", tmp_path)


# The checks below run under the family's interpreter (``python tests/test_adapters_sequence.py CHECK TMPDIR``).
PROTEINS = ("MKTAYIAKQRQISFVKSHFSRQ", "GSHMSL", "MKVLAAGIVALLLAAGCSSX")


def _protein_records(with_backbone: bool = False):
    """Protein records, with N/CA/C ``backbone_coords`` when ``with_backbone``."""
    from extractors import Record

    out = []
    for i, seq in enumerate(PROTEINS):
        rng = np.random.default_rng(i)
        t = np.arange(len(seq))[:, None]
        ca = np.hstack([2.3 * np.cos(1.75 * t), 2.3 * np.sin(1.75 * t), 1.5 * t])  # an alpha-helix-like trace
        bb = (
            ca[:, None, :]
            + np.array([[-1.2, 0.6, -0.4], [0.0, 0.0, 0.0], [1.3, 0.5, 0.3]])
            + rng.normal(0, 0.05, (len(seq), 3, 3))
        )
        out.append(Record(id=f"p{i}", sequence=seq, ca_coords=ca, backbone_coords=bb if with_backbone else None))
    return out


def _check_esm2(tmp: Path) -> None:
    import pickle
    from argparse import Namespace

    import esm
    import torch

    from extractors.models import fair_esm
    from extractors.registry import get_spec

    torch.manual_seed(0)
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    model = esm.model.esm2.ESM2(num_layers=2, embed_dim=32, attention_heads=4, alphabet=alphabet).eval()
    sd = model.state_dict()
    regression = {k: v for k, v in sd.items() if k.startswith("contact_head.regression")}
    state = {f"encoder.sentence_encoder.{k}": v for k, v in sd.items() if k not in regression}
    cfg = Namespace(encoder_layers=2, encoder_embed_dim=32, encoder_attention_heads=4, token_dropout=True)
    ckpt = tmp / "esm2_t2_tiny_UR50D.pt"  # fair-esm's checkpoint layout (cfg + prefixed state) and name pattern
    torch.save({"cfg": {"model": cfg}, "model": state}, ckpt)
    torch.save({"model": regression}, tmp / "esm2_t2_tiny_UR50D-contact-regression.pt")
    try:
        torch.load(ckpt)
        raise AssertionError("weights_only load accepted argparse.Namespace: the safe_globals guard is untested")
    except pickle.UnpicklingError:
        pass

    records = _protein_records()
    ext = fair_esm.build(get_spec("esm2-t6-8m"), weights=str(ckpt))
    feats = np.stack([e.features for e in ext.embed(records)])
    assert feats.shape == (3, 32) and feats.dtype == np.float32 and np.isfinite(feats).all()
    convert = alphabet.get_batch_converter()

    def reference(layer: int, n: int | None = None) -> np.ndarray:
        out = []
        for r in records:
            _, _, tokens = convert([("x", r.sequence[:n] if n else r.sequence)])
            with torch.no_grad():
                rep = model(tokens, repr_layers=[layer])["representations"][layer]
            out.append(rep[0, 1 : tokens.shape[1] - 1].mean(0).numpy())  # residues: no BOS, no EOS
        return np.stack(out)

    np.testing.assert_allclose(feats, reference(2), atol=ATOL)
    (tmp / "esm2_t2_tiny_UR50D-contact-regression.pt").unlink()  # optional: embeddings do not use contacts
    first = fair_esm.build(get_spec("esm2-t6-8m"), weights=str(ckpt), layer="1")
    np.testing.assert_allclose(np.stack([e.features for e in first.embed(records)]), reference(1), atol=ATOL)
    short = fair_esm.build(get_spec("esm2-t6-8m"), weights=str(ckpt), truncation_seq_length=5)
    np.testing.assert_allclose(np.stack([e.features for e in short.embed(records)]), reference(2, 5), atol=ATOL)
    for bad, match in (({"layer": "3"}, "representation layer"), ({"weights": str(tmp / "none.pt")}, "no fair-esm")):
        try:
            fair_esm.build(get_spec("esm2-t6-8m"), **{"weights": str(ckpt), **bad})
            raise AssertionError(f"{bad} accepted")
        except (ValueError, FileNotFoundError) as err:
            assert match in str(err), err


def _check_esm_if1(tmp: Path) -> None:
    from argparse import Namespace

    try:
        import esm.inverse_folding
    except ImportError as err:
        print(f"ESM-IF1 needs torch_scatter/torch_geometric/biotite in the fair_esm environment: {err}")
        sys.exit(SKIP)
    import torch

    from extractors.models import fair_esm
    from extractors.registry import get_spec

    dims = {"encoder_embed_dim": 32, "decoder_embed_dim": 32, "encoder_ffn_embed_dim": 64}
    dims |= {"decoder_ffn_embed_dim": 64, "encoder_layers": 2, "decoder_layers": 1, "encoder_attention_heads": 4}
    dims |= {"decoder_attention_heads": 4, "dropout": 0.1, "attention_dropout": 0.1}
    gvp = {"gvp_top_k_neighbors": 8, "gvp_node_hidden_dim_scalar": 16, "gvp_node_hidden_dim_vector": 4}
    gvp |= {"gvp_edge_hidden_dim_scalar": 8, "gvp_edge_hidden_dim_vector": 2, "gvp_num_encoder_layers": 2}
    gvp |= {"gvp_dropout": 0.1}
    args = Namespace(arch="vanilla_invariant_gvp", **dims, **gvp)
    torch.manual_seed(0)
    alphabet = esm.data.Alphabet.from_architecture(args.arch)
    model = esm.inverse_folding.gvp_transformer.GVPTransformerModel(args, alphabet).eval()
    ckpt = tmp / "esm_if1_gvp2_t2_tiny.pt"  # 'esm_if' in the name: no contact-regression file expected
    torch.save({"args": args, "model": model.state_dict()}, ckpt)

    records = _protein_records(with_backbone=True)
    ext = fair_esm.build(get_spec("esm-if1"), weights=str(ckpt))
    assert ext.check(_protein_records()[0]) is not None and ext.check(records[0]) is None
    feats = np.stack([e.features for e in ext.embed(records)])
    assert feats.shape == (3, 32) and np.isfinite(feats).all()
    with torch.no_grad():
        ref = [
            esm.inverse_folding.util.get_encoder_output(model, alphabet, r.backbone_coords.astype(np.float32)).mean(0)
            for r in records
        ]
    np.testing.assert_allclose(feats, np.stack([x.numpy() for x in ref]), atol=ATOL)


def _check_esmc(tmp: Path) -> None:
    import torch
    from esm.models.esmc import ESMC
    from esm.sdk.api import ESMProtein, LogitsConfig
    from esm.tokenization import get_esmc_model_tokenizers

    from extractors.models import esm3
    from extractors.registry import get_spec

    torch.manual_seed(0)
    arch = {"d_model": 64, "n_heads": 2, "n_layers": 2}
    model = ESMC(**arch, tokenizer=get_esmc_model_tokenizers(), use_flash_attn=False).eval()
    snapshot = tmp / "esmc-300m-2024-12"  # the Hugging Face snapshot layout
    (snapshot / "data" / "weights").mkdir(parents=True)
    torch.save(model.state_dict(), snapshot / "data" / "weights" / "esmc_300m_2024_12_v0.pth")
    records = _protein_records()
    ext = esm3.build(get_spec("esmc-300m"), weights=str(snapshot), arch=arch)
    feats = np.stack([e.features for e in ext.embed(records)])
    assert feats.shape == (3, 64) and np.isfinite(feats).all()
    ref = []
    for r in records:  # the SDK's own path, one protein at a time
        out = model.logits(model.encode(ESMProtein(sequence=r.sequence)), LogitsConfig(return_embeddings=True))
        ref.append(out.embeddings[0, 1:-1].mean(0).numpy())
    np.testing.assert_allclose(feats, np.stack(ref), atol=ATOL)
    direct = esm3.build(
        get_spec("esmc-300m"), weights=str(snapshot / "data/weights/esmc_300m_2024_12_v0.pth"), arch=arch
    )
    np.testing.assert_allclose(direct.embed(records[:1])[0].features, feats[0], atol=ATOL)
    try:
        esm3.build(get_spec("esmc-600m"), weights=str(snapshot), arch=arch)
        raise AssertionError("missing esmc_600m weights accepted")
    except FileNotFoundError as err:
        assert "esmc_600m_2024_12_v0.pth" in str(err)


def _check_esm3(tmp: Path) -> None:
    import torch
    from esm.models.esm3 import ESM3
    from esm.models.vqvae import StructureTokenEncoder
    from esm.sdk.api import ESMProtein, LogitsConfig

    from extractors.models import esm3
    from extractors.registry import get_spec

    torch.manual_seed(0)
    arch = {"d_model": 64, "n_heads": 2, "v_heads": 4, "n_layers": 2}
    enc_arch = {"d_model": 32, "n_heads": 1, "v_heads": 4, "n_layers": 1, "d_out": 16, "n_codes": 4096}
    encoder = StructureTokenEncoder(**enc_arch).eval()
    model = ESM3(
        **arch,
        structure_encoder_fn=lambda _device: encoder,
        structure_decoder_fn=None,
        function_decoder_fn=None,
        tokenizers=esm3.local_tokenizers(tmp),
    ).eval()
    weights = tmp / "esm3-sm-open-v1" / "data" / "weights"
    weights.mkdir(parents=True)
    torch.save(model.state_dict(), weights / "esm3_sm_open_v1.pth")
    torch.save(encoder.state_dict(), weights / "esm3_structure_encoder_v0.pth")
    snapshot = str(weights.parents[1])
    records = _protein_records(with_backbone=True)

    seq = esm3.build(get_spec("esm3-sequence"), weights=snapshot, arch=arch)
    feats = np.stack([e.features for e in seq.embed(records)])
    assert feats.shape == (3, 64) and np.isfinite(feats).all()
    ref = []
    for r in records:
        out = model.logits(model.encode(ESMProtein(sequence=r.sequence)), LogitsConfig(return_embeddings=True))
        ref.append(out.embeddings[0, 1:-1].mean(0).numpy())
    np.testing.assert_allclose(feats, np.stack(ref), atol=ATOL)

    struct = esm3.build(get_spec("esm3-structure"), weights=snapshot, arch=arch, encoder_arch=enc_arch)
    assert struct.check(_protein_records()[0]) is not None and struct.check(records[0]) is None
    sfeats = np.stack([e.features for e in struct.embed(records)])
    assert sfeats.shape == (3, 64) and np.isfinite(sfeats).all()
    ref = []
    for r in records:
        atom37 = torch.full((len(r.sequence), 37, 3), float("nan"))
        atom37[:, :3] = torch.from_numpy(r.backbone_coords.astype(np.float32))
        protein = model.encode(ESMProtein(coordinates=atom37))
        assert protein.sequence is None or bool(
            (protein.sequence[1:-1] == seq.model.tokenizers.sequence.mask_token_id).all()
        )
        out = model.logits(protein, LogitsConfig(return_embeddings=True))
        ref.append(out.embeddings[0, 1:-1].mean(0).numpy())
    np.testing.assert_allclose(sfeats, np.stack(ref), atol=ATOL)
    assert not np.allclose(sfeats, feats, atol=1e-3)


CHECKS = {"esm2": _check_esm2, "esm_if1": _check_esm_if1, "esmc": _check_esmc, "esm3": _check_esm3}

if __name__ == "__main__":
    CHECKS[sys.argv[1]](Path(sys.argv[2]))
