"""Entry point of harness-text: registers its datasets and architectures.

Kept import-light (no torch, numpy or pandas) so `harness --help` stays instant; they load inside
load/encoder/decode/build.
"""

import functools

from harness import ArchitectureSpec, DatasetSpec, hookimpl

from . import archs, datasets, embeddings


@hookimpl
def register_datasets(register):
    # rotten-tomatoes, imdb, sst5, trec6, each with GloVe 50-d (no suffix), 100-d and 300-d.
    for entry in datasets.CATALOGUE:
        for emb in embeddings.EMBEDDINGS.values():
            register(DatasetSpec(
                entry.name + emb.suffix, len(entry.classes), (entry.max_len, emb.dim), modality="text",
                load=datasets.loader(entry.name, emb.key),
                encoder=functools.partial(embeddings.make_encoder, emb.key),
                decode=functools.partial(embeddings.decode, emb.key),
                classes=list(entry.classes),
                description=entry.description(emb.description),
            ))


@hookimpl
def register_architectures(register):
    register(ArchitectureSpec("textcnn", ("text",), archs.build_textcnn,
                              "Kim 2014 CNN: conv widths 3/4/5 x 100 filters, ReLU, max over time, dropout 0.5",
                              features=True))
    register(ArchitectureSpec("bilstm", ("text",), archs.build_bilstm,
                              "bidirectional LSTM (128 per direction), outputs max-pooled over time, linear",
                              features=True))
    register(ArchitectureSpec("rnn", ("text",), archs.build_rnn,
                              "GRU (128), last hidden state, linear", features=True))
