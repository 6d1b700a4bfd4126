"""Data sets: the embedded default (scikit-learn's digits), synthetic sets, local files.

Nothing is downloaded. Every loader returns a :class:`Dataset` of NumPy
arrays (float32 inputs, int32 labels) with a deterministic train/test split;
``fit`` moves them to the device once.

* :func:`load_digits`: 1,797 8x8 handwritten digits shipped inside
  scikit-learn (``pip install jaxnets[data]``), the default for experiments.
* :func:`make_moons`, :func:`make_spirals`: small 2-D classification sets.
* :func:`load_idx`, :func:`load_mnist`: MNIST-format IDX files (raw or
  gzipped) from a local path.
* :func:`load_csv`: a numeric CSV with one label column.

Splits are stratified. :func:`train_test_split` (used by spirals and CSV
files) is NumPy's: scikit-learn is needed only for its own data sets, digits
and moons, which keep scikit-learn's stratified split (the figures published
for them were measured on it).
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from typing import Any, NamedTuple

import numpy as np

from jaxnets import _checks

__all__ = [
    "Dataset",
    "DataFileNotFoundError",
    "load_digits",
    "make_moons",
    "make_spirals",
    "load_idx",
    "load_mnist",
    "load_csv",
    "standardize",
    "train_test_split",
]


class DataFileNotFoundError(FileNotFoundError, ValueError):
    """A data file is missing. Both a ``FileNotFoundError`` and a ``ValueError``."""


class Dataset(NamedTuple):
    """A classification data set split into train and test parts.

    Attributes:
      x_train: ``(n_train, *features)`` float32.
      y_train: ``(n_train,)`` int32 labels in ``[0, num_classes)``.
      x_test: ``(n_test, *features)`` float32.
      y_test: ``(n_test,)`` int32.
      num_classes: number of classes.
      name: where the data came from.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one batch of inputs with the batch left unknown: ``(-1, *features)``."""
        return (-1,) + tuple(self.x_train.shape[1:])

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}: train x{tuple(self.x_train.shape)} y{tuple(self.y_train.shape)}, "
            f"test x{tuple(self.x_test.shape)} y{tuple(self.y_test.shape)}, {self.num_classes} classes)"
        )


def _require_sklearn(what: str):
    try:
        import sklearn  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"{what} needs scikit-learn: pip install 'jaxnets[data]'") from e


def train_test_split(x: np.ndarray, y: np.ndarray, *, test_fraction: float = 0.2,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic stratified split: each class keeps its share in both parts.

    The test part holds ``ceil(test_fraction * n)`` examples (scikit-learn's
    count), shared among the classes in proportion to their sizes (largest
    remainders get the leftover places). Within each class the examples are
    drawn by a NumPy generator seeded with ``seed``; both parts are then
    shuffled. Done in NumPy: no scikit-learn needed.

    Args:
      x: ``(n, *features)``.
      y: ``(n,)`` integer labels; every class needs at least 2 examples (one
        for each part).
      test_fraction: in (0, 1).
      seed: seeds the draw.

    Returns ``(x_train, y_train, x_test, y_test)``.

    Raises:
      ValueError: a class with fewer than 2 examples, ``x`` and ``y`` of
        different lengths, or a test part too small or too large to hold
        every class.
    """
    test_fraction = _checks.in_unit_interval(test_fraction, "test_fraction")
    if test_fraction == 0.0:
        raise ValueError("test_fraction must be in (0, 1), got 0.0")
    x, y = np.asarray(x), np.asarray(y)
    if y.ndim != 1 or x.ndim < 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must hold one example per row of y: x {x.shape}, y {y.shape}")
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    if np.any(counts < 2):
        once = classes[counts < 2]
        raise ValueError(
            f"y: class {once[0].item()!r} has {int(counts[counts < 2][0])} example; a stratified split needs at least 2 "
            f"examples of every class ({len(once)} class(es) with fewer: {once[:10].tolist()})"
        )
    n = y.shape[0]
    n_test = math.ceil(test_fraction * n)
    if not len(classes) <= n_test <= n - len(classes):
        raise ValueError(
            f"test_fraction {test_fraction} puts {n_test} of {n} examples in the test part; a stratified split of "
            f"{len(classes)} classes needs between {len(classes)} and {n - len(classes)}"
        )
    share = counts * (n_test / n)  # each class's exact share of the test part
    per_class = np.floor(share).astype(np.int64)
    leftover = n_test - int(per_class.sum())
    per_class[np.argsort(-(share - per_class), kind="stable")[:leftover]] += 1
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for c in range(len(classes)):
        members = rng.permutation(np.flatnonzero(inverse == c))
        test_idx.append(members[: per_class[c]])
        train_idx.append(members[per_class[c]:])
    train_idx = rng.permutation(np.concatenate(train_idx))
    test_idx = rng.permutation(np.concatenate(test_idx))
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


def standardize(x_train: np.ndarray, x_test: np.ndarray, eps: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
    """Scale each feature to zero mean and unit variance, with statistics of ``x_train`` only.

    Features that are constant on the training set (the always-blank corner
    pixels of digits) are centred and left unscaled. Fitting on the test set
    too would leak it into training.

    Returns ``(x_train, x_test)`` standardised, float32.
    """
    x_train, x_test = np.asarray(x_train), np.asarray(x_test)
    if x_train.ndim < 1 or x_train.shape[0] == 0:
        raise ValueError(f"x_train must hold at least one example (rows on axis 0), got shape {x_train.shape}")
    if x_test.shape[1:] != x_train.shape[1:]:
        raise ValueError(f"x_test must have x_train's features, {x_train.shape[1:]}, got {x_test.shape[1:]}")
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std = np.where(std > eps, std, 1.0)
    return ((x_train - mean) / std).astype(np.float32), ((x_test - mean) / std).astype(np.float32)


def _sklearn_split(x, y, *, test_fraction: float, seed: int):
    """scikit-learn's stratified split, for scikit-learn's own data sets (digits, moons)."""
    test_fraction = _checks.in_unit_interval(test_fraction, "test_fraction")
    if test_fraction == 0.0:
        raise ValueError("test_fraction must be in (0, 1), got 0.0")
    from sklearn.model_selection import train_test_split as split

    x_tr, x_te, y_tr, y_te = split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return x_tr, y_tr, x_te, y_te


def _finish(x, y, name, num_classes, *, test_fraction, seed, standardize_inputs, image_shape=None, splitter=None) -> Dataset:
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    x_tr, y_tr, x_te, y_te = (splitter or train_test_split)(x, y, test_fraction=test_fraction, seed=seed)
    if standardize_inputs:
        x_tr, x_te = standardize(x_tr, x_te)
    if image_shape is not None:
        x_tr = x_tr.reshape((-1,) + image_shape)  # (n, 8, 8, 1): NHWC
        x_te = x_te.reshape((-1,) + image_shape)
    return Dataset(x_tr, y_tr, x_te, y_te, num_classes, name)


def load_digits(*, test_fraction: float = 0.2, seed: int = 0, standardize: bool = True, as_images: bool = False) -> Dataset:
    """scikit-learn's bundled handwritten digits: 1,797 images of 8x8 pixels, 10 classes.

    Args:
      test_fraction: share of each class held out for testing (default 20%:
        1,437 train, 360 test).
      seed: seeds the stratified split (scikit-learn's ``train_test_split``).
      standardize: scale each pixel to zero mean and unit variance using
        training statistics only (pixels range over 0..16 otherwise).
      as_images: shape inputs ``(n, 8, 8, 1)`` (NHWC) instead of ``(n, 64)``.
    """
    _require_sklearn("load_digits")
    from sklearn.datasets import load_digits as sk_digits

    bunch: Any = sk_digits()  # a Bunch (sklearn's return_X_y overloads are not typed)
    return _finish(
        bunch.data, bunch.target, "digits", 10,
        test_fraction=test_fraction, seed=seed, standardize_inputs=standardize,
        image_shape=(8, 8, 1) if as_images else None, splitter=_sklearn_split,
    )


def make_moons(n_samples: int = 1000, *, noise: float = 0.1, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Two interleaving half circles in 2-D (scikit-learn's ``make_moons``), 2 classes."""
    n_samples = _checks.positive_int(n_samples, "n_samples")
    noise = _checks.positive_float(noise, "noise", allow_zero=True)
    _require_sklearn("make_moons")
    from sklearn.datasets import make_moons as sk_moons

    x, y = sk_moons(n_samples=n_samples, noise=noise, random_state=seed)
    return _finish(x, y, "moons", 2, test_fraction=test_fraction, seed=seed, standardize_inputs=False, splitter=_sklearn_split)


def make_spirals(
    n_samples: int = 900, *, num_classes: int = 3, noise: float = 0.2, turns: float = 1.0,
    test_fraction: float = 0.2, seed: int = 0,
) -> Dataset:
    """``num_classes`` interleaved spiral arms in 2-D; not linearly separable.

    Arm ``k`` has points ``r (sin t, cos t)`` with ``r`` from 0 to 1 and
    ``t = 2 pi (turns r + k / num_classes)`` plus Gaussian angle noise of
    standard deviation ``noise`` (radians).
    """
    n_samples = _checks.positive_int(n_samples, "n_samples")
    num_classes = _checks.positive_int(num_classes, "num_classes")
    noise = _checks.positive_float(noise, "noise", allow_zero=True)
    if n_samples < 2 * num_classes:
        raise ValueError(f"n_samples must be at least 2 per class ({2 * num_classes}), got {n_samples}")
    rng = np.random.default_rng(seed)
    per_class = n_samples // num_classes
    xs, ys = [], []
    for k in range(num_classes):
        r = np.linspace(0.0, 1.0, per_class)
        t = 2 * np.pi * (turns * r + k / num_classes) + rng.normal(0.0, noise, per_class)
        xs.append(np.stack([r * np.sin(t), r * np.cos(t)], axis=1))
        ys.append(np.full(per_class, k))
    return _finish(np.concatenate(xs), np.concatenate(ys), "spirals", num_classes,
                   test_fraction=test_fraction, seed=seed, standardize_inputs=False)


# ---------------------------------------------------------------------------
# IDX files (the MNIST format)
# ---------------------------------------------------------------------------

# Third byte of the magic number -> big-endian element type.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path: str | os.PathLike[str], what: str = "path") -> bytes:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataFileNotFoundError(2, f"{what}: no such file", path)
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":  # gzip magic
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{what} {path!r} looks gzipped but cannot be decompressed: {e}") from None
    return raw


def load_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads one IDX file (raw or gzipped, detected from its first bytes).

    The format: a magic number ``0x00 0x00 <type> <ndim>``, then ``ndim``
    big-endian uint32 sizes, then the elements in C order, big-endian.

    Returns:
      The array in native byte order, with the file's shape and element type.

    Raises:
      DataFileNotFoundError: the file does not exist (also a ``ValueError``).
      ValueError: wrong magic number, unknown element type, or a size that does
        not match the header (truncated or with trailing bytes).
    """
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise ValueError(f"path {os.fspath(path)!r} is not an IDX file: {len(raw)} bytes, shorter than the 4-byte magic number")
    zero, type_code, ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if zero != 0 or type_code not in _IDX_DTYPES:
        raise ValueError(
            f"path {os.fspath(path)!r} is not an IDX file: magic number must be 0x0000 followed by a type in "
            f"{[hex(c) for c in _IDX_DTYPES]}, got {raw[:4].hex()}"
        )
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise ValueError(f"path {os.fspath(path)!r}: truncated IDX header ({len(raw)} bytes for {ndim} dimensions)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = header + math.prod(shape) * dtype.itemsize  # Python ints: no overflow for any header
    if len(raw) != expected:
        kind = "truncated" if len(raw) < expected else "has trailing bytes"
        raise ValueError(
            f"path {os.fspath(path)!r}: IDX data {kind}: header says shape {shape} of {dtype.name} "
            f"({expected} bytes in all), file has {len(raw)} bytes"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def load_mnist(directory: str | os.PathLike[str], *, as_images: bool = False, name: str = "mnist") -> Dataset:
    """MNIST (or Fashion-MNIST, or any set in its layout) from a local folder.

    The folder holds the four standard files, each raw or with ``.gz``:
    ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``. The official
    split is kept; pixels are scaled to ``[0, 1]``.

    Args:
      directory: the folder.
      as_images: inputs ``(n, 28, 28, 1)`` (NHWC) instead of ``(n, 784)``.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise DataFileNotFoundError(2, "directory: no such folder", directory)
    arrays = {}
    for key, stem in _MNIST_FILES.items():
        candidates = [os.path.join(directory, stem + ext) for ext in ("", ".gz")]
        found = next((c for c in candidates if os.path.isfile(c)), None)
        if found is None:
            raise DataFileNotFoundError(2, f"directory: missing {stem} (or {stem}.gz)", directory)
        arrays[key] = load_idx(found)
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"directory {directory!r}: {split} images must be (n, h, w) and labels (n,), "
                f"got {x.shape} and {y.shape}"
            )
    for split in ("train", "test"):
        labels = arrays[f"y_{split}"]
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"directory {directory!r}: {split} labels must be integers, got IDX type {labels.dtype.name}")
        if labels.size and int(labels.min()) < 0:
            raise ValueError(f"directory {directory!r}: {split} labels must be >= 0, got {int(labels.min())}")
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise ValueError(
            f"directory {directory!r}: train and test images must have the same size, got "
            f"{arrays['x_train'].shape[1:]} (train) and {arrays['x_test'].shape[1:]} (test)"
        )
    num_classes = int(max(arrays["y_train"].max(), arrays["y_test"].max())) + 1

    def prep(x):
        x = x.astype(np.float32) / 255.0
        return x[..., None] if as_images else x.reshape(x.shape[0], -1)  # (n, h, w, 1) or (n, h*w)

    return Dataset(
        prep(arrays["x_train"]), arrays["y_train"].astype(np.int32),
        prep(arrays["x_test"]), arrays["y_test"].astype(np.int32), num_classes, name,
    )


def load_csv(
    path: str | os.PathLike[str], *, label_column: int = -1, skip_header: bool = False, delimiter: str = ",",
    test_fraction: float = 0.2, seed: int = 0, standardize: bool = True,
) -> Dataset:
    """A numeric CSV: one row per example, one integer label column, the rest features.

    Read with ``numpy.loadtxt`` (blank lines skipped). Labels may be any
    integers; they are mapped to ``0..k-1`` in sorted order. The split is
    stratified (:func:`train_test_split`) and deterministic; standardisation
    uses training statistics only.

    Raises:
      DataFileNotFoundError: no such file.
      ValueError: a missing value (an empty cell, ``nan``) or a non-numeric
        cell, naming its row and column (both counted from 0 over the data
        rows, the header excluded); rows of different lengths; a
        non-integer label; a label seen only once (a stratified split needs
        two examples of each class).
    """
    where = f"path {os.fspath(path)!r}"
    text = _read_bytes(path).decode("utf-8", errors="replace")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if skip_header:
        lines = lines[1:]
    if not lines:
        raise ValueError(f"{where}: the CSV has no data rows")
    widths = [line.count(delimiter) + 1 for line in lines]
    ragged = next((r for r, w in enumerate(widths) if w != widths[0]), None)
    if ragged is not None:
        raise ValueError(
            f"{where}: rows have different numbers of columns: row {ragged} has {widths[ragged]}, row 0 has "
            f"{widths[0]} (rows counted from 0, header excluded)"
        )
    cells = np.loadtxt(lines, dtype=str, delimiter=delimiter, ndmin=2, comments=None)
    cells = np.char.strip(cells)
    missing = (cells == "") | (np.char.lower(cells) == "nan")
    if missing.any():
        r, c = (int(i) for i in np.argwhere(missing)[0])
        raise ValueError(
            f"{where}: missing value at row {r}, column {c} (counted from 0, header excluded): {str(cells[r, c])!r}; "
            f"{int(missing.sum())} missing in all"
        )
    try:
        table = cells.astype(np.float64)
    except ValueError:
        for r, c in np.ndindex(cells.shape):
            try:
                float(cells[r, c])
            except ValueError:
                raise ValueError(f"{where}: row {r}, column {c} is not numeric: {str(cells[r, c])[:40]!r}") from None
        raise  # pragma: no cover - astype failed on a cell float() accepts
    if table.shape[1] < 2:
        raise ValueError(f"{where}: need a label column and at least one feature, got {table.shape[1]} column")
    if not -table.shape[1] <= label_column < table.shape[1]:
        raise ValueError(f"label_column must index one of {table.shape[1]} columns, got {label_column}")
    raw_labels = table[:, label_column]
    if not np.all(np.isfinite(raw_labels) & (raw_labels == np.round(raw_labels))):
        raise ValueError(f"{where}: label column {label_column} must hold integers")
    classes, y, counts = np.unique(raw_labels.astype(np.int64), return_inverse=True, return_counts=True)
    if np.any(counts < 2):
        label = int(classes[counts < 2][0])
        row = int(np.flatnonzero(raw_labels == label)[0])
        raise ValueError(
            f"{where}: label {label} (label column {label_column}) appears only once, at row {row}; a stratified "
            f"split needs at least 2 examples of each label"
        )
    x = np.delete(table, label_column % table.shape[1], axis=1)
    return _finish(x, y, os.path.basename(os.fspath(path)), len(classes),
                   test_fraction=test_fraction, seed=seed, standardize_inputs=standardize)
