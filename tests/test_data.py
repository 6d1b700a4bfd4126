"""Data: the digits split and standardisation, synthetic sets, IDX/MNIST and CSV files the tests write."""

import gzip
import os

import numpy as np
import pytest

from jaxnets import data


def test_digits_split_is_stratified_deterministic_and_standardised_on_train():
    d = data.load_digits()
    assert d.x_train.shape == (1437, 64) and d.x_test.shape == (360, 64)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int32
    assert d.num_classes == 10 and d.input_shape == (-1, 64)
    # Stratified: each class's share of the test set is within one example of its share overall.
    all_y = np.concatenate([d.y_train, d.y_test])
    for c in range(10):
        assert abs(np.sum(d.y_test == c) - 0.2 * np.sum(all_y == c)) <= 1
    again = data.load_digits()
    np.testing.assert_array_equal(d.x_train, again.x_train)
    np.testing.assert_array_equal(d.y_test, again.y_test)
    # Train features: zero mean and unit variance (constant pixels: zero variance); test: not exactly.
    np.testing.assert_allclose(d.x_train.mean(axis=0), 0.0, atol=1e-5)
    std = d.x_train.std(axis=0)
    assert np.all((np.abs(std - 1.0) < 1e-4) | (std < 1e-6))
    assert np.abs(d.x_test.mean(axis=0)).max() > 1e-3
    other = data.load_digits(seed=1)
    assert not np.array_equal(other.y_test, d.y_test)


def test_digits_raw_and_images():
    raw = data.load_digits(standardize=False)
    assert raw.x_train.min() == 0.0 and raw.x_train.max() == 16.0
    images = data.load_digits(as_images=True)
    assert images.x_train.shape == (1437, 8, 8, 1) and images.input_shape == (-1, 8, 8, 1)
    np.testing.assert_array_equal(images.x_train.reshape(1437, 64), data.load_digits().x_train)


def test_standardize_uses_training_statistics_only():
    x_train = np.array([[0.0, 5.0], [2.0, 5.0]])
    x_test = np.array([[4.0, 7.0]])
    tr, te = data.standardize(x_train, x_test)
    np.testing.assert_allclose(tr, [[-1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(te, [[3.0, 2.0]])  # (4 - 1) / 1; constant feature: centred, unscaled


def test_moons_and_spirals():
    moons = data.make_moons(200, noise=0.1)
    assert moons.x_train.shape == (160, 2) and moons.num_classes == 2
    assert set(np.unique(moons.y_train)) == {0, 1}
    spirals = data.make_spirals(300, num_classes=3)
    assert spirals.x_train.shape[1] == 2 and spirals.num_classes == 3
    assert np.all(np.linalg.norm(np.concatenate([spirals.x_train, spirals.x_test]), axis=1) <= 1.0 + 1e-6)
    np.testing.assert_array_equal(spirals.x_train, data.make_spirals(300, num_classes=3).x_train)
    with pytest.raises(ValueError, match="n_samples must be at least 2 per class"):
        data.make_spirals(3, num_classes=3)


# ---------------------------------------------------------------------------
# IDX files
# ---------------------------------------------------------------------------

_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


def write_idx(path, array, *, compress=False):
    """Encode an array as IDX bytes: magic, big-endian sizes, big-endian data."""
    array = np.asarray(array)
    header = bytes([0, 0, _CODES[array.dtype.type], array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    with open(path, "wb") as f:
        f.write(gzip.compress(raw) if compress else raw)
    return raw


@pytest.mark.parametrize("dtype", list(_CODES))
@pytest.mark.parametrize("compress", [False, True])
def test_idx_roundtrip(tmp_path, dtype, compress, rng):
    array = (rng.normal(size=(3, 4, 5)) * 50).astype(dtype)
    path = tmp_path / ("a.idx" + (".gz" if compress else ""))
    write_idx(path, array, compress=compress)
    loaded = data.load_idx(path)
    assert loaded.dtype == np.dtype(dtype) and loaded.dtype.isnative
    np.testing.assert_array_equal(loaded, array)


def test_idx_errors(tmp_path):
    with pytest.raises(data.DataFileNotFoundError, match="no such file"):
        data.load_idx(tmp_path / "missing.idx")
    with pytest.raises(ValueError, match="no such file"):  # also a ValueError
        data.load_idx(tmp_path / "missing.idx")
    good = write_idx(tmp_path / "good", np.arange(12, dtype=np.uint8).reshape(3, 4))

    def corrupt(name, raw):
        p = tmp_path / name
        p.write_bytes(raw)
        return p

    with pytest.raises(ValueError, match="is not an IDX file: magic number must be 0x0000 followed by a type"):
        data.load_idx(corrupt("magic", b"\x00\x01" + good[2:]))
    with pytest.raises(ValueError, match="is not an IDX file: magic number"):
        data.load_idx(corrupt("type", b"\x00\x00\x07" + good[3:]))
    with pytest.raises(ValueError, match=r"IDX data truncated: header says shape \(3, 4\) of uint8 \(24 bytes in all\), file has 20 bytes"):
        data.load_idx(corrupt("short", good[:-4]))
    with pytest.raises(ValueError, match="IDX data has trailing bytes"):
        data.load_idx(corrupt("long", good + b"\x00"))
    with pytest.raises(ValueError, match="truncated IDX header"):
        data.load_idx(corrupt("header", good[:9]))
    with pytest.raises(ValueError, match="shorter than the 4-byte magic number"):
        data.load_idx(corrupt("tiny", b"\x00\x00"))
    with pytest.raises(ValueError, match="looks gzipped but cannot be decompressed"):
        data.load_idx(corrupt("bad.gz", gzip.compress(good)[:-10]))


def _fake_mnist(folder, rng, *, n_train=12, n_test=5, compress=True):
    os.makedirs(folder, exist_ok=True)
    ext = ".gz" if compress else ""
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)).astype(np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)).astype(np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for name, a in arrays.items():
        write_idx(os.path.join(folder, name + ext), a, compress=compress)
    return arrays


@pytest.mark.parametrize("compress", [False, True])
def test_load_mnist(tmp_path, rng, compress):
    arrays = _fake_mnist(tmp_path, rng, compress=compress)
    d = data.load_mnist(tmp_path)
    assert d.x_train.shape == (12, 784) and d.x_test.shape == (5, 784) and d.num_classes == 10
    np.testing.assert_allclose(d.x_train[0], arrays["train-images-idx3-ubyte"][0].reshape(-1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(d.y_test, arrays["t10k-labels-idx1-ubyte"])
    images = data.load_mnist(tmp_path, as_images=True)
    assert images.x_train.shape == (12, 28, 28, 1) and images.x_train.max() <= 1.0


def test_load_mnist_errors(tmp_path, rng):
    with pytest.raises(data.DataFileNotFoundError, match="no such folder"):
        data.load_mnist(tmp_path / "nowhere")
    _fake_mnist(tmp_path, rng)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(ValueError, match=r"missing t10k-labels-idx1-ubyte \(or t10k-labels-idx1-ubyte.gz\)"):
        data.load_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(4, np.uint8), compress=True)
    with pytest.raises(ValueError, match=r"test images must be \(n, h, w\) and labels \(n,\), got \(5, 28, 28\) and \(4,\)"):
        data.load_mnist(tmp_path)


def test_load_csv(tmp_path, rng):
    x = rng.normal(size=(40, 3))
    y = np.repeat([3, 7], 20)
    lines = ["a,b,c,label"] + [f"{r[0]},{r[1]},{r[2]},{c}" for r, c in zip(x, y)]
    path = tmp_path / "table.csv"
    path.write_text("\n".join(lines))
    d = data.load_csv(path, skip_header=True, standardize=False)
    assert d.num_classes == 2 and d.x_train.shape == (32, 3) and set(np.unique(d.y_train)) == {0, 1}
    rows = {tuple(np.round(r, 5)) for r in np.concatenate([d.x_train, d.x_test])}
    assert rows == {tuple(np.round(r, 5).astype(np.float32)) for r in x}


def test_load_csv_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,0\n3,x,1\n")
    with pytest.raises(ValueError, match="row 1, column 1 is not numeric: 'x'"):
        data.load_csv(bad)
    bad.write_text("1,2,0\n3,1\n")
    with pytest.raises(ValueError, match=r"rows have different numbers of columns: row 1 has 2, row 0 has 3"):
        data.load_csv(bad)
    bad.write_text("1,2,0.5\n3,1,1\n")
    with pytest.raises(ValueError, match="label column -1 must hold integers"):
        data.load_csv(bad)
    bad.write_text("")
    with pytest.raises(ValueError, match="the CSV has no data rows"):
        data.load_csv(bad)
    with pytest.raises(data.DataFileNotFoundError):
        data.load_csv(tmp_path / "none.csv")


def test_csv_missing_value_named_by_row_and_column(tmp_path):
    path = tmp_path / "gaps.csv"
    rows = [f"{i},{i * 2},{i % 2}" for i in range(10)]
    rows[6] = "6,nan,0"
    path.write_text("x,y,label\n" + "\n".join(rows))
    with pytest.raises(ValueError, match=r"missing value at row 6, column 1 \(counted from 0, header excluded\): 'nan'; 1 missing in all"):
        data.load_csv(path, skip_header=True)
    rows[6], rows[8] = "6,12,0", "8,,0"
    path.write_text("\n".join(rows))
    with pytest.raises(ValueError, match=r"missing value at row 8, column 1 .*: ''"):
        data.load_csv(path)


def test_csv_label_seen_once_is_named(tmp_path):
    path = tmp_path / "rare.csv"
    path.write_text("\n".join([f"{i},0" for i in range(6)] + ["7,5"] + [f"{i},1" for i in range(5)]))
    with pytest.raises(ValueError, match=r"label 5 \(label column -1\) appears only once, at row 6; a stratified split needs"):
        data.load_csv(path)


def test_csv_and_split_need_no_scikit_learn(tmp_path, rng, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sklearn", None)  # any import of scikit-learn now fails
    x = rng.normal(size=(30, 2))
    path = tmp_path / "t.csv"
    path.write_text("\n".join(f"{a},{b},{i % 3}" for i, (a, b) in enumerate(x)))
    d = data.load_csv(path, test_fraction=0.2)
    assert d.x_train.shape == (24, 2) and d.x_test.shape == (6, 2)
    assert sorted(np.bincount(d.y_test).tolist()) == [2, 2, 2]


def test_split_counts_and_determinism():
    y = np.repeat(np.arange(3), [11, 20, 69])
    x = np.arange(100.0)[:, None]
    x_tr, y_tr, x_te, y_te = data.train_test_split(x, y, test_fraction=0.25, seed=3)
    assert len(y_te) == 25 and len(y_tr) == 75  # ceil(0.25 * 100), as scikit-learn counts
    assert np.bincount(y_te).tolist() == [3, 5, 17]  # shares 2.75, 5, 17.25: the leftover place goes to the largest remainder
    assert sorted(np.concatenate([x_tr, x_te]).ravel().tolist()) == x.ravel().tolist()  # a partition
    np.testing.assert_array_equal(x_te, data.train_test_split(x, y, test_fraction=0.25, seed=3)[2])
    assert not np.array_equal(x_te, data.train_test_split(x, y, test_fraction=0.25, seed=4)[2])


def test_idx_header_sizes_that_overflow_int64(tmp_path):
    path = tmp_path / "huge-idx3-ubyte"
    # Sizes 2**32 - 1 in each of 3 dimensions: their product overflows int64 (np.prod would wrap).
    path.write_bytes(bytes([0, 0, 0x08, 3]) + (2**32 - 1).to_bytes(4, "big") * 3 + bytes(16))
    with pytest.raises(ValueError, match=r"IDX data truncated: header says shape \(4294967295, 4294967295, 4294967295\)"):
        data.load_idx(path)


def test_mnist_train_and_test_images_of_different_sizes(tmp_path, rng):
    write_idx(tmp_path / "train-images-idx3-ubyte", rng.integers(0, 255, (6, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", rng.integers(0, 10, 6).astype(np.uint8))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 255, (4, 27, 27), dtype=np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", rng.integers(0, 10, 4).astype(np.uint8))
    with pytest.raises(ValueError, match=r"train and test images must have the same size, got \(28, 28\) \(train\) and \(27, 27\) \(test\)"):
        data.load_mnist(tmp_path)
