"""Reference Keras implementation of TIM-Net, used only to produce test fixtures.

It builds the architecture in tf-keras (Keras 2 semantics, as the authors' Keras 2.4) in the same
layer-creation order as the authors' code, so Keras's own `load_weights` (which matches layers by
graph order, not by our mapping) loads their `.hdf5` files. That makes it an independent check of
`timnet.model.keras_weights`.

Needs the optional extra:   pip install -e .[reference]      (tensorflow-cpu + tf-keras)

Regenerate the fixtures (from the repo root, with ../shared beside it):

    timnet preprocess --dataset EMODB --data ../shared/data/emodb-16k-subset --out /tmp/emodb16k
    python tools/keras_reference.py --weights ../shared/data/timnet-weights/EMODB_46.zip \
        --mfcc /tmp/emodb16k/EMODB.npy --out tests/data

Writes:
    keras_random_emodb.hdf5 + keras_random_emodb.npz   a randomly initialised Keras model, inputs, its
                                                       logits, softmax and penultimate outputs (no ../shared needed)
    keras_reference_emodb46.npz                        fold-1 authors' weights: inputs, logits, softmax, penultimate
    keras_reference_emodb46_predictions.csv            every fold model on its test files of the subset
"""

from __future__ import annotations

import argparse
import os
import re
import zipfile
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402
from sklearn.model_selection import KFold  # noqa: E402
from tf_keras import layers  # noqa: E402


class WeightLayer(layers.Layer):
    """Learned weights over levels: [B, L, C] -> [B, C]."""

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(input_shape[1], 1), initializer="uniform", trainable=True)

    def call(self, x):
        return tf.squeeze(tf.tensordot(tf.transpose(x, [0, 2, 1]), self.kernel, axes=1), axis=-1)


def temporal_aware_block(x, filters, kernel_size, dilation, dropout):
    h = x
    for _ in range(2):
        h = layers.Conv1D(filters, kernel_size, dilation_rate=dilation, padding="causal")(h)
        h = layers.BatchNormalization(axis=-1)(h)
        h = layers.Activation("relu")(h)
        h = layers.SpatialDropout1D(dropout)(h)
    gate = layers.Lambda(tf.sigmoid)(h)
    return layers.Lambda(lambda t: t[0] * t[1])([x, gate])


def build(
    n_classes: int,
    frames: int,
    n_mfcc: int = 39,
    filters: int = 39,
    kernel_size: int = 2,
    levels: int = 8,
    dropout: float = 0.1,
) -> tuple[keras.Model, keras.Model]:
    """(model with softmax output, model with the penultimate [B, C] output)."""
    inputs = keras.Input(shape=(frames, n_mfcc))
    backward = tf.reverse(inputs, axis=[1])
    fwd = layers.Conv1D(filters, 1, padding="causal")(inputs)
    bwd = layers.Conv1D(filters, 1, padding="causal")(backward)
    pooled = []
    for level in range(levels):
        d = 2**level
        fwd = temporal_aware_block(fwd, filters, kernel_size, d, dropout)
        bwd = temporal_aware_block(bwd, filters, kernel_size, d, dropout)
        summed = layers.add([fwd, bwd], name=f"biadd_{d}")
        pooled.append(tf.expand_dims(layers.GlobalAveragePooling1D()(summed), axis=1))
    stacked = pooled[0]
    for item in pooled[1:]:
        stacked = tf.concat([stacked, item], axis=-2)
    embedding = WeightLayer()(stacked)
    outputs = layers.Dense(n_classes, activation="softmax")(embedding)
    return keras.Model(inputs, outputs), keras.Model(inputs, embedding)


def outputs(model: keras.Model, embedder: keras.Model, x: np.ndarray) -> dict[str, np.ndarray]:
    """softmax, penultimate embedding, and logits (Keras's embedding through Keras's dense weights)."""
    embedding = embedder.predict(x, verbose=0)
    kernel, bias = model.layers[-1].get_weights()
    return {"softmax": model.predict(x, verbose=0), "embedding": embedding, "logits": embedding @ kernel + bias}


def fold_files(zip_path: Path) -> dict[int, bytes]:
    with zipfile.ZipFile(zip_path) as z:
        return {
            int(m.group(1)): z.read(n) for n in z.namelist() if (m := re.search(r"fold_weights_best_(\d+)\.hdf5$", n))
        }


def load(model: keras.Model, blob: bytes, tmp: Path) -> None:
    tmp.write_bytes(blob)
    model.load_weights(str(tmp))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, required=True, help="the authors' EMODB_46.zip")
    ap.add_argument("--mfcc", type=Path, required=True, help="EMODB.npy written by `timnet preprocess` (with its .csv)")
    ap.add_argument("--seed", type=int, default=46)
    ap.add_argument("--canonical", type=Path, default=Path("src/timnet/data/emodb_files.txt"))
    ap.add_argument("--out", type=Path, default=Path("tests/data"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    data = np.load(args.mfcc, allow_pickle=True).item()
    x, y = data["x"].astype(np.float32), data["y"].argmax(1)
    manifest = pd.read_csv(args.mfcc.with_suffix(".csv"), dtype=str, keep_default_na=False)
    manifest = manifest[manifest.status == "ok"].reset_index(drop=True)
    frames, n_classes = x.shape[1], data["y"].shape[1]
    model, embedder = build(n_classes, frames)
    tmp = args.out / ".tmp_weights.hdf5"

    # 1) random model: parity test that needs no ../shared
    tf.keras.utils.set_random_seed(0)
    rand_model, rand_embed = build(n_classes, frames)
    rand_model.save_weights(str(args.out / "keras_random_emodb.hdf5"))
    rng = np.random.default_rng(0)
    inputs = np.concatenate([x[:6], rng.normal(0, 50, size=(2,) + x.shape[1:]).astype(np.float32)])
    np.savez_compressed(args.out / "keras_random_emodb.npz", x=inputs, **outputs(rand_model, rand_embed, inputs))

    # 2) the authors' fold-1 weights on real features
    folds = fold_files(args.weights)
    load(model, folds[1], tmp)
    np.savez_compressed(
        args.out / "keras_reference_emodb46.npz",
        x=inputs,
        stems=np.array(list(manifest.stem[:6]) + ["noise0", "noise1"]),
        **outputs(model, embedder, inputs),
    )

    # 3) every fold on its own test files present in the subset
    canonical = args.canonical.read_text().split()
    from natsort import natsort_keygen, ns  # the authors' order, re-derived here independently

    order = {"W": 0, "L": 1, "E": 2, "A": 3, "F": 4, "N": 5, "T": 6}
    key = natsort_keygen(alg=ns.PATH)
    canonical = sorted(canonical, key=lambda s: (order[s[5]], key(f"{s}_raw.csv")))
    where = {s: i for i, s in enumerate(canonical)}
    position = np.array([where[s] for s in manifest.stem])
    rows = []
    for k, (_, test) in enumerate(
        KFold(10, shuffle=True, random_state=args.seed).split(np.zeros(len(canonical))), start=1
    ):
        load(model, folds[k], tmp)
        sel = np.flatnonzero(np.isin(position, test))
        prob = model.predict(x[sel], verbose=0)
        rows += [
            {
                "stem": manifest.stem[i],
                "fold": k,
                "label": int(y[i]),
                "keras_pred": int(p.argmax()),
                "keras_prob": float(p.max()),
            }
            for i, p in zip(sel, prob)
        ]
    tmp.unlink()
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "keras_reference_emodb46_predictions.csv", index=False)
    war = (table.label == table.keras_pred).mean() * 100
    print(f"Keras reference on {len(table)} files: WAR {war:.2f} %")


if __name__ == "__main__":
    main()
