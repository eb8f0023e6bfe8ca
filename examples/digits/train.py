"""Train the small digits CNN used as edgeopt's end-to-end example model.

Writes three artefacts (paths relative to the repository root by default):

* ``examples/digits/digits_cnn.h5``      - the trained model, legacy HDF5
* ``calibration_data/digits/calib.npz``  - 300 training images for int8 calibration
* ``calibration_data/digits/val.npz``    - the 360 held-out images and labels
* ``calibration_data/digits/train.npz``  - the training images and labels (for distillation)

Usage::

    python examples/digits/train.py [--out-dir REPO_ROOT] [--epochs N]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

# Keep TensorFlow's import-time log noise out of the script's output; must be
# set before TensorFlow is first imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]

SEED = 0
NUM_CLASSES = 10
VAL_SIZE = 360
CALIB_SIZE = 300
# load_digits pixels are integer intensities 0..16.
PIXEL_MAX = 16.0


def load_data(seed: int = SEED):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images.astype(np.float32) / PIXEL_MAX)[..., np.newaxis]
    y = digits.target.astype(np.int64)
    # Stratified so every class is represented in proportion in the 360
    # validation images; otherwise accuracy on so small a set is noisy.
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=VAL_SIZE, stratify=y, random_state=seed
    )
    return x_train, y_train, x_val, y_val


def build_model():
    import keras
    from keras import layers

    def conv_bn_relu(x, filters, kernel_size, name):
        # No bias: BatchNormalization's beta makes it redundant, and converters
        # are expected to fold BN into the preceding convolution.
        x = layers.Conv2D(
            filters, kernel_size, padding="same", use_bias=False, name=f"{name}_conv"
        )(x)
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
        return layers.ReLU(name=f"{name}_relu")(x)

    inputs = keras.Input(shape=(8, 8, 1), name="image")
    x = conv_bn_relu(inputs, 32, 3, "stem")

    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw_conv")(x)
    x = layers.BatchNormalization(name="dw_bn")(x)
    x = layers.ReLU(name="dw_relu")(x)
    x = conv_bn_relu(x, 64, 1, "pw")

    x = layers.MaxPooling2D(2, name="pool1")(x)  # 8x8 -> 4x4
    x = conv_bn_relu(x, 64, 3, "block2")
    x = layers.AveragePooling2D(2, name="pool2")(x)  # 4x4 -> 2x2

    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(256, activation="relu", name="fc1")(x)
    x = layers.Dropout(0.3, name="dropout")(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


def accuracy(model, x, y) -> float:
    probs = model.predict(x, batch_size=256, verbose=0)
    return float(np.mean(np.argmax(probs, axis=-1) == y))


def write_train_set(path, x_train, y_train) -> None:
    """The training split with labels: what pruning's distillation step learns from."""
    np.savez_compressed(path, image=x_train.astype(np.float32), labels=y_train.astype(np.int64))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=REPO_ROOT,
        help="root under which examples/digits/ and calibration_data/digits/ "
        "are written (default: the repository root)",
    )
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    # Seeds Python, NumPy and the backend; op determinism additionally rules
    # out nondeterministic kernel choices so reruns give identical weights.
    keras.utils.set_random_seed(args.seed)
    tf.config.experimental.enable_op_determinism()

    x_train, y_train, x_val, y_val = load_data(args.seed)

    model = build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    model.fit(
        x_train,
        y_train,
        batch_size=32,
        epochs=args.epochs,
        validation_data=(x_val, y_val),
        callbacks=[
            keras.callbacks.ReduceLROnPlateau(
                monitor="loss", factor=0.5, patience=3, min_lr=1e-5
            )
        ],
        verbose=2,
    )
    train_s = time.perf_counter() - start

    val_acc = accuracy(model, x_val, y_val)

    model_path = args.out_dir / "examples" / "digits" / "digits_cnn.h5"
    calib_path = args.out_dir / "calibration_data" / "digits" / "calib.npz"
    val_path = args.out_dir / "calibration_data" / "digits" / "val.npz"
    train_path = args.out_dir / "calibration_data" / "digits" / "train.npz"
    for path in (model_path, calib_path, val_path):
        path.parent.mkdir(parents=True, exist_ok=True)

    # Optimizer state is useless to the compression pipeline and would roughly
    # triple the file size.
    model.save(model_path, include_optimizer=False)
    # train_test_split already shuffled the training set, so its head is a
    # class-mixed sample; calibration must never see validation images.
    np.savez_compressed(calib_path, image=x_train[:CALIB_SIZE].astype(np.float32))
    np.savez_compressed(
        val_path, image=x_val.astype(np.float32), labels=y_val.astype(np.int64)
    )
    write_train_set(train_path, x_train, y_train)

    print(f"training time: {train_s:.1f} s")
    print(f"parameters: {model.count_params()}")
    print(f"validation accuracy: {val_acc:.4f} ({VAL_SIZE} samples)")
    for path in (model_path, calib_path, val_path, train_path):
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
