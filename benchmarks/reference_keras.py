"""The original CIFAKE notebook, re-implemented faithfully in Keras 3 (TensorFlow backend): a measuring stick.

What it does, as the notebook did: `keras.utils.image_dataset_from_directory` reads JPEGs from a CIFAKE-style
folder tree every epoch (batch 128, 32x32), the pixels are rescaled to [0, 1] in the tf.data pipeline, the
model starts with RandomFlip("horizontal_and_vertical"), then `keras.applications.ResNet50(include_top=False,
input_shape=(32, 32, 3))` and the notebook's head (Flatten -> Dense 256 ReLU -> BatchNorm -> Dropout 0.5 ->
Dense 128 ReLU -> Dense 1 sigmoid), trained with Adam 1e-3 on binary cross-entropy, EarlyStopping(patience 3,
restore_best_weights) and ReduceLROnPlateau (x0.2 after 2 epochs) on the validation loss.

It is never imported by realfake. benchmarks/run.py runs it in a child process (so TensorFlow and PyTorch do
not share a process or its thread pools): `python -m benchmarks.reference_keras DATA_DIR OUT.json ...`, where
DATA_DIR holds train/, val/ and test/ folders, each with REAL/ and FAKE/. Everything it measures (per-batch
times, per-epoch times, accuracy, prediction speed, latency) is written to OUT.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter hides the benchmark's output
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

CLASS_NAMES = ["REAL", "FAKE"]  # label 0, 1: FAKE is the positive class, as in realfake
IMAGE_SIZE = 32


def load_split(folder: Path, batch_size: int, shuffle: bool, seed: int) -> Any:
    """A CIFAKE-style folder as the notebook read it: decoded from JPEG each epoch, rescaled to [0, 1]."""
    import keras

    ds = keras.utils.image_dataset_from_directory(
        str(folder), labels="inferred", label_mode="binary", class_names=CLASS_NAMES,
        image_size=(IMAGE_SIZE, IMAGE_SIZE), batch_size=batch_size, shuffle=shuffle, seed=seed, verbose=False,
    )
    return ds.map(lambda x, y: (x / 255.0, y))


def build_model(weights: str = "auto") -> tuple[Any, str]:
    """The notebook's model; `weights` auto tries ImageNet and falls back to random initialisation offline."""
    import keras
    from keras import layers

    def backbone(w: str | None) -> Any:
        return keras.applications.ResNet50(include_top=False, weights=w, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3))

    if weights in ("auto", "imagenet"):
        try:
            base, used = backbone("imagenet"), "imagenet"
        except Exception as e:  # noqa: BLE001 - offline, proxy or a broken download all end the same way
            if weights == "imagenet":
                raise
            base, used = backbone(None), f"none (ImageNet weights unavailable: {e.__class__.__name__})"
    else:
        base, used = backbone(None), "none"
    model = keras.Sequential(
        [
            keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3)),
            layers.RandomFlip("horizontal_and_vertical"),
            base,
            layers.Flatten(),
            layers.Dense(256, activation="relu"),
            layers.BatchNormalization(),
            layers.Dropout(0.5),
            layers.Dense(128, activation="relu"),
            layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy", metrics=["accuracy"])
    return model, used


def _timer_callback() -> Any:
    import keras

    class Timer(keras.callbacks.Callback):
        """Wall time at the end of every training batch and every epoch (validation included in the latter)."""

        def on_train_begin(self, logs: Any = None) -> None:
            self.t0 = time.perf_counter()
            self.batches: list[list[float]] = []  # per epoch: end time of each batch, from the epoch's start
            self.epoch_end: list[float] = []  # seconds since training began

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.e0 = time.perf_counter()
            self.batches.append([])

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self.batches[-1].append(time.perf_counter() - self.e0)

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.epoch_end.append(time.perf_counter() - self.t0)

    return Timer()


def train_and_measure(
    data_dir: Path, epochs: int, batch_size: int = 128, weights: str = "auto", seed: int = 42,
    predict_n: int = 2048, predict_batch: int = 1024, latency_n: int = 50,
) -> dict[str, Any]:
    """Train the notebook's model on data_dir/{train,val}, test on data_dir/test, time prediction."""
    import keras
    import numpy as np
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    t_load = time.perf_counter()
    train = load_split(data_dir / "train", batch_size, True, seed)
    val = load_split(data_dir / "val", batch_size, False, seed)
    test = load_split(data_dir / "test", batch_size, False, seed)
    load_s = time.perf_counter() - t_load
    model, weights_used = build_model(weights)
    timer = _timer_callback()
    early = keras.callbacks.EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.2, patience=2, min_lr=1e-6)
    t0 = time.perf_counter()
    hist = model.fit(train, validation_data=val, epochs=epochs, callbacks=[timer, early, plateau], verbose=0)
    fit_s = time.perf_counter() - t0
    n_epochs = len(hist.history["loss"])
    best_epoch = int(np.argmin(hist.history["val_loss"])) + 1  # what restore_best_weights brings back
    _, test_acc = model.evaluate(test, verbose=0)

    # Prediction speed on in-memory uint8 images, /255 included, as realfake's is measured.
    images = np.concatenate([x.numpy() for x, _ in test.unbatch().batch(4096).map(lambda x, y: (x * 255.0, y))])
    images = np.round(images).astype(np.uint8)
    reps = -(-predict_n // len(images))
    batch = np.concatenate([images] * reps)[:predict_n]
    model.predict(batch[:predict_batch].astype("float32") / 255.0, batch_size=predict_batch, verbose=0)  # warm-up
    t = time.perf_counter()
    model.predict(batch.astype("float32") / 255.0, batch_size=predict_batch, verbose=0)
    predict_s = time.perf_counter() - t
    single = []
    for i in range(latency_n + 3):
        x = batch[i % len(batch)][None].astype("float32") / 255.0
        t = time.perf_counter()
        model.predict_on_batch(x)
        single.append(time.perf_counter() - t)
    return {
        "weights_used": weights_used,
        "epochs_run": n_epochs,
        "best_epoch": best_epoch,
        "history": {k: [float(v) for v in vals] for k, vals in hist.history.items()},
        "batch_end_s": timer.batches,
        "epoch_end_s": timer.epoch_end,
        "n_train": int(sum(1 for _ in train.unbatch())),
        "batch_size": batch_size,
        "dataset_setup_s": load_s,
        "fit_s": fit_s,
        "test_accuracy": float(test_acc),
        "predict_n": predict_n,
        "predict_s": predict_s,
        "latency_s": single[3:],
        "threads": {
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        },
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data_dir", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--weights", default="auto", choices=["auto", "imagenet", "none"])
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--predict-n", type=int, default=2048)
    p.add_argument("--predict-batch", type=int, default=1024)
    p.add_argument("--latency-n", type=int, default=50)
    a = p.parse_args(argv)
    result = train_and_measure(
        a.data_dir, a.epochs, a.batch_size, a.weights, a.seed, a.predict_n, a.predict_batch, a.latency_n
    )
    tmp = a.out.with_name(f".{a.out.name}.tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
