"""Export a backstory model to llama2.c or Hugging Face; import theirs as a backstory model.

What each export format writes: docs/interop.md. ``load_external`` reads any of: a run.c
``.bin``, a llama2.c ``ckpt.pt``, a Hugging Face Llama folder or a backstory model
folder, and returns a ``TrainedModel`` with the ``Tokenizer`` it reads text with.
Tokenization of an import is always sentencepiece's, from a ``tokenizer.model``:
tokenizer.bin holds pieces and scores but none of the normalisation rules, so it is only
checked against the model (same pieces, same scores), never used to rebuild one.
llama2.c keeps that file beside its exports (tokenizer.model for the Llama 2 vocabulary,
data/tok<N>.model for custom ones).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from backstory import variants
from backstory.core.errors import InputError, SettingError
from backstory.core.files import file_sha256, write_folder_atomically
from backstory.data.tokenizer import (
    Tokenizer,
    check_llama2c_tokenizer_bin,
    llama2c_tokenizer_bin,
)
from backstory.lm.checkpoint import (
    CHECKPOINTS_DIR,
    MODEL_META_FILE,
    TrainedModel,
    load_trained,
    save_model,
)
from backstory.lm.checkpoint import WEIGHTS_FILE as BACKSTORY_WEIGHTS_FILE
from backstory.lm.interop import hf, llama2c
from backstory.lm.interop.metadata import export_document, read_document

FORMATS = ("llama2c", "hf")
LLAMA2C_MODEL_FILE = "model.bin"
LLAMA2C_TOKENIZER_FILE = "tokenizer.bin"
TOKENIZER_MODEL_FILE = "tokenizer.model"
SIDECAR_SUFFIX = ".lineage.json"


# Files that make a folder a model (any format read here): never overwritten unasked.
MODEL_FILES = frozenset({BACKSTORY_WEIGHTS_FILE, MODEL_META_FILE, hf.CONFIG_FILE,
                         hf.WEIGHTS_INDEX_FILE, hf.PICKLED_WEIGHTS_FILE, LLAMA2C_MODEL_FILE,
                         "ckpt.pt"})
WRITTEN_FILES = {
    "llama2c": (LLAMA2C_MODEL_FILE, LLAMA2C_TOKENIZER_FILE, TOKENIZER_MODEL_FILE,
                LLAMA2C_MODEL_FILE.removesuffix(".bin") + SIDECAR_SUFFIX),
    "hf": hf.WRITTEN_FILES,
    "backstory": (BACKSTORY_WEIGHTS_FILE, MODEL_META_FILE, TOKENIZER_MODEL_FILE),
}


class OutFolderError(InputError):
    """``--out`` would overwrite a model, or is not a folder."""


def check_out_folder(out_dir: Path, fmt: str, *, source: Path | None = None,
                     force: bool = False) -> None:
    """Refuse an output folder whose writing would destroy a model, unless ``force``.

    Refused: ``source`` itself (or the folder of a source file), a folder inside a
    model or training-run folder (a project's run folders are rewritten by training
    and read by evaluation), and a folder that already holds model files or files
    this format writes. A file is refused even with ``force``: the output is a folder.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutFolderError(f"--out {out_dir} is a file; --out must be a folder (new, or "
                             "empty) to write the model files into")
    if force:
        return
    hint = "choose a new or empty folder, or pass --force to replace its files"
    here = out_dir.resolve()
    if source is not None:
        source = Path(source).resolve()
        if here in (source, source.parent if source.is_file() else source):
            raise OutFolderError(f"--out {out_dir} is where the source {source} lies; writing "
                                 f"there would replace the model being read: {hint}")
    for folder in (here, *here.parents):
        if (folder / MODEL_META_FILE).is_file() or (folder / CHECKPOINTS_DIR).is_dir():
            raise OutFolderError(f"--out {out_dir} is or lies inside the model or training "
                                 f"run folder {folder}, which training rewrites: {hint}")
    held = sorted(name for name in MODEL_FILES.union(WRITTEN_FILES[fmt])
                  if (out_dir / name).exists())
    if held:
        raise OutFolderError(f"--out {out_dir} already holds {', '.join(held)}; writing "
                             f"there would replace them: {hint}")


def sidecar_path(bin_path: Path) -> Path:
    """Where the lineage of a run.c weight file is kept: model.bin -> model.lineage.json."""
    return bin_path.with_name(bin_path.stem + SIDECAR_SUFFIX)


def _check_vocab(trained: TrainedModel, tokenizer: Tokenizer, where: str) -> None:
    if trained.config.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"{where}: the model has {trained.config.vocab_size} token ids but the "
                         f"tokenizer {tokenizer.vocab_size}; they were not made together")


# --- export ------------------------------------------------------------------------------


def export_model(trained: TrainedModel, tokenizer: Tokenizer, out_dir: Path, *,
                 fmt: str, source: Path | None = None, force: bool = False) -> list[Path]:
    """Write ``trained`` and ``tokenizer`` as format ``fmt`` into ``out_dir``; the files.

    ``check_out_folder`` first (``source``: the model folder read). The files are
    written into a folder beside ``out_dir`` and moved in at the end
    (``write_folder_atomically``), so a failed export leaves ``out_dir`` as it was;
    other files in ``out_dir`` are left alone.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; formats: {', '.join(FORMATS)}")
    if trained.config.family != "llama":
        raise SettingError(
            f"cannot export a {trained.config.family} model to {fmt}: llama2.c and Hugging "
            "Face Llama hold Llama decoders only (model.family: llama)")
    _check_vocab(trained, tokenizer, "export")
    if fmt == "hf" and tokenizer.model_type != "bpe":
        raise ValueError(
            f"the tokenizer is a sentencepiece {tokenizer.model_type} model; "
            "transformers' LlamaTokenizer converts sentencepiece BPE only and would "
            "give other ids: train with tokenizer.model_type: bpe to export to hf")
    check_out_folder(out_dir, fmt, source=source, force=force)
    document = export_document(trained, tokenizer.sha256)

    def stage(staging: Path) -> None:
        if fmt == "llama2c":
            _stage_llama2c(trained, tokenizer, staging, document)
        else:
            hf.write_hf_folder(trained, tokenizer.model_bytes, staging, bos_id=tokenizer.bos_id,
                               eos_id=tokenizer.eos_id, document=document)

    return write_folder_atomically(out_dir, stage)


def _stage_llama2c(trained: TrainedModel, tokenizer: Tokenizer, staging: Path,
                   document: dict[str, Any]) -> None:
    (staging / LLAMA2C_TOKENIZER_FILE).write_bytes(llama2c_tokenizer_bin(tokenizer))
    llama2c.write_llama2c_model(trained, staging / LLAMA2C_MODEL_FILE)
    (staging / TOKENIZER_MODEL_FILE).write_bytes(tokenizer.model_bytes)
    sidecar = sidecar_path(staging / LLAMA2C_MODEL_FILE)
    sidecar.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")


# --- import ------------------------------------------------------------------------------


def detect_format(source: Path) -> str:
    """Which kind of model ``source`` is: llama2c-bin, llama2c-checkpoint, hf or backstory."""
    source = Path(source)
    if source.is_dir():
        if (source / hf.CONFIG_FILE).is_file():
            return "hf"
        if (source / MODEL_META_FILE).is_file() and (source / BACKSTORY_WEIGHTS_FILE).is_file():
            return "backstory"
        raise ValueError(f"{source} is a folder with neither {hf.CONFIG_FILE} (Hugging Face) "
                         f"nor {MODEL_META_FILE} + {BACKSTORY_WEIGHTS_FILE} (backstory)")
    if not source.is_file():
        raise FileNotFoundError(f"{source} does not exist")
    if source.suffix == ".bin":
        return "llama2c-bin"
    if source.suffix in (".pt", ".pth"):
        return "llama2c-checkpoint"
    raise ValueError(f"{source}: cannot tell its format; expected a run.c .bin, a llama2.c "
                     "ckpt.pt or a model folder")




def _find_tokenizer(source: Path, given: Path | None) -> Path:
    if given is not None:
        return Path(given)
    folder = source if source.is_dir() else source.parent
    candidate = folder / TOKENIZER_MODEL_FILE
    if candidate.is_file():
        return candidate
    raise FileNotFoundError(
        f"no sentencepiece tokenizer for {source}: put {TOKENIZER_MODEL_FILE} next to it or "
        "pass the .model file (llama2.c keeps tokenizer.model for the Llama 2 vocabulary and "
        "data/tok<N>.model for custom ones); tokenizer.bin alone is not enough, it lacks the "
        "normalisation rules"
    )


def load_external(source: Path, *, tokenizer: Path | None = None,
                  tokenizer_bin: Path | None = None,
                  variant: str | None = None) -> tuple[TrainedModel, Tokenizer]:
    """A model from outside backstory's pipeline, with the tokenizer it reads text with.

    ``source``: a run.c ``.bin`` (its ``<stem>.lineage.json`` sidecar is read when
    present), a llama2.c ``ckpt.pt``, a Hugging Face Llama folder or a backstory model
    folder. ``tokenizer``: the sentencepiece model; by default ``tokenizer.model`` next to
    ``source``. For a ``.bin``, ``tokenizer_bin`` (default: ``tokenizer.bin`` next to it,
    if any) must match that model piece for piece. ``variant`` states the text layout of
    a model without backstory lineage (or must agree with the lineage it has).
    """
    source = Path(source)
    kind = detect_format(source)
    tokenizer_path = _find_tokenizer(source, tokenizer)
    tok = Tokenizer.from_file(tokenizer_path)
    document, weights_file = None, source
    if kind == "llama2c-bin":
        sidecar = sidecar_path(source)
        if sidecar.is_file():
            document = _read_json(sidecar)
        config = read_document(document, source=str(sidecar))[0] if document else None
        trained = llama2c.read_llama2c_model(source, config=config)
        _check_tokenizer_bin(source, tok, tokenizer_bin)
    elif kind == "llama2c-checkpoint":
        trained = llama2c.load_llama2c_checkpoint(source)
    elif kind == "hf":
        trained, document = hf.read_hf_folder(source)
        if document is not None:
            config = read_document(document, source=str(source / hf.CONFIG_FILE))[0]
            _check_same_config(trained.config, config, source / hf.CONFIG_FILE)
            trained = TrainedModel(config, trained.state_dict, trained.meta)
        weights_file = source / hf.WEIGHTS_FILE
    else:
        trained = load_trained(source)
        weights_file = source / BACKSTORY_WEIGHTS_FILE
    _check_vocab(trained, tok, str(source))
    meta = _import_meta(trained, document, tok, variant, source=source)
    meta["imported_from"] = {
        "format": kind, "path": str(source), "tokenizer": str(tokenizer_path),
        "sha256": file_sha256(weights_file) if weights_file.is_file() else None,
    }
    return TrainedModel(trained.config, trained.state_dict, meta), tok


def _check_same_config(from_hf: Any, recorded: Any, file: Path) -> None:
    """Refuse a config.json whose Hugging Face fields (edited by hand?) contradict the
    backstory export record it carries: which of the two describes the weights is unknown."""
    differ = [f"{name}: {getattr(from_hf, name)!r} in the Hugging Face fields, "
              f"{getattr(recorded, name)!r} under {hf.METADATA_KEY!r}"
              for name in ("vocab_size", "dim", "n_layers", "n_heads", "kv_heads", "ffn_hidden_dim",
                           "max_seq_len", "norm_eps", "rope_theta")
              if getattr(from_hf, name) != getattr(recorded, name)]
    if differ:
        raise InputError(f"{file} contradicts itself ({'; '.join(differ)}); make the two agree "
                         f"(or delete the {hf.METADATA_KEY!r} key to import the Hugging Face "
                         "fields as they are)")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err


def _check_tokenizer_bin(source: Path, tok: Tokenizer, given: Path | None) -> None:
    path = Path(given) if given is not None else source.parent / LLAMA2C_TOKENIZER_FILE
    if given is not None and not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_file():
        check_llama2c_tokenizer_bin(tok, path.read_bytes(), source=str(path))


def _import_meta(trained: TrainedModel, document: Any, tok: Tokenizer, variant: str | None,
                 *, source: Path) -> dict[str, Any]:
    """The imported model's meta: the export's own when it has one, else a minimal lineage."""
    if document is not None:
        meta = read_document(document, source=str(source))[1]
        if document.get("tokenizer_sha256") != tok.sha256:
            raise ValueError(f"{source} was exported with tokenizer sha256 "
                             f"{document.get('tokenizer_sha256')}, not the given one "
                             f"({tok.sha256})")
    else:
        meta = {k: v for k, v in trained.meta.items() if k != "source"}
    lineage = dict(meta.get("lineage") or {})
    if variant is not None:
        spec = variants.get(variant)
        recorded = lineage.get("variant")
        if recorded not in (None, variant):
            raise ValueError(f"{source} was trained as the {recorded!r} variant, not {variant!r}")
        lineage.update(variant=variant, layout=spec.layout)
    lineage.setdefault("tokenizer_sha256", tok.sha256)
    lineage.setdefault("vocab_size", tok.vocab_size)
    meta["lineage"] = lineage
    return meta


def save_imported(trained: TrainedModel, tokenizer: Tokenizer, out_dir: Path, *,
                  source: Path | None = None, force: bool = False) -> list[Path]:
    """Write an import as a backstory model folder plus its ``tokenizer.model``.

    ``check_out_folder`` first; written like ``export_model``, all or nothing.
    """
    check_out_folder(out_dir, "backstory", source=source, force=force)

    def stage(staging: Path) -> None:
        save_model(staging, trained)
        (staging / TOKENIZER_MODEL_FILE).write_bytes(tokenizer.model_bytes)

    return write_folder_atomically(out_dir, stage)
