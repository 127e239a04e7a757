"""Fuzzing of the data readers (issue "Reliability", item 6).

Malformed headers, truncated files, wrong dtypes and wrong shapes are fed to every reader of the suite. Each
case must end in the reader's own error (:class:`DataError`, or :class:`CheckpointError` for checkpoints) or,
where the fuzzed input happens to be valid, in a correct result: never in a foreign exception (``KeyError``,
``IndexError``, ``struct.error``, ``zlib.error``, ``UnicodeDecodeError``, a ``ValueError`` of numpy,
``EOFError`` ...) and never in a hang (an alarm turns a test running past :data:`HANG_S` into a failure).

Every example writes its files under its own ``tempfile.TemporaryDirectory()``. The example counts are small
so that the whole file runs in well under 30 s on two cores (``MOTFM_FUZZ_SCALE=10`` searches ten times
longer); the bugs fuzzing found are pinned with ``@example`` so that they are checked on every run whatever
hypothesis draws.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import pickle
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from data.fixtures import camus_frame, write_camus, write_camus_split, write_legacy_pickle, write_msd
from motfm.checkpoint import CheckpointError, read_checkpoint
from motfm.conditions import read_mask_file
from motfm.data.base import DataError, DataSpec, check_sample
from motfm.data.camus import CamusDataset, read_info_cfg
from motfm.data.dicom import DicomDataset, dicom_frames
from motfm.data.legacy_pickle import LegacyPickleDataset
from motfm.data.metaimage import ELEMENT_TYPES, read_metaimage, write_metaimage
from motfm.data.msd import MsdBrainDataset, read_decathlon_json, read_nifti

T = TypeVar("T")
HANG_S = 120  # seconds one fuzz test may run before it counts as a hang
# MOTFM_FUZZ_SCALE=10 multiplies the example counts, for a deeper search than the default quick run.
SCALE = max(float(os.environ.get("MOTFM_FUZZ_SCALE", "1")), 0.04)
FUZZ = settings(
    max_examples=round(25 * SCALE),
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,  # the autouse fixtures only seed torch and arm the hang alarm
    ],
)
FEW = settings(FUZZ, max_examples=round(12 * SCALE))  # examples that build a whole dataset


class ReaderHang(BaseException):
    """A test ran past :data:`HANG_S` (a ``BaseException`` so that hypothesis does not try to shrink it)."""


@pytest.fixture(autouse=True)
def _no_hang() -> Iterator[None]:
    """Fail, instead of hanging, when one test runs longer than :data:`HANG_S` seconds."""
    if not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise ReaderHang(f"a fuzz test ran for more than {HANG_S} s: a reader hangs")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(HANG_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def result_or_own_error(fn: Callable[[], T], error: type[Exception] = DataError) -> T | None:
    """``fn()``, or ``None`` when it raised ``error``; any other exception propagates and fails the test."""
    try:
        return fn()
    except error:
        return None


def raises_own_error(fn: Callable[[], Any], path: Path, error: type[Exception] = DataError) -> str:
    """Assert that ``fn()`` raises ``error`` (nothing else) naming ``path``; returns the message."""
    with pytest.raises(error) as info:
        fn()
    assert path.name in str(info.value), f"the error does not name {path.name}: {info.value}"
    return str(info.value)


def cut(data: bytes, fraction: float) -> bytes:
    """``data`` truncated to a strict prefix at ``fraction`` of its length."""
    return data[: min(int(len(data) * fraction), len(data) - 1)]


fractions = st.floats(0.0, 1.0, exclude_max=True)
ascii_text = st.text(st.characters(min_codepoint=0, max_codepoint=127), max_size=24)

# --------------------------------------------------------------------------------------------- MetaImage

META_KEYS = (
    "ObjectType",
    "NDims",
    "DimSize",
    "ElementType",
    "ElementSpacing",
    "Offset",
    "CompressedData",
    "BinaryDataByteOrderMSB",
    "ElementNumberOfChannels",
    "HeaderSize",
    "ElementDataFile",
)
number_lists = st.lists(
    st.one_of(st.integers(-3, 2**70), st.floats(allow_nan=True, allow_infinity=True)), max_size=4
).map(lambda v: " ".join(map(str, v)))
meta_values = st.one_of(
    ascii_text,
    number_lists,
    st.sampled_from(
        ["Image", "2", "3", "0", "-1", "True", "False", "MET_UCHAR", "MET_FLOAT", "img.raw", "LOCAL", "LIST"]
        + ["", " ", "missing.raw", "%03d.raw", ".", "a\x00b.raw", "4 3", "3 4", "12 1"]
    ),
)
VALID_HEADER = {
    "ObjectType": "Image",
    "NDims": "2",
    "BinaryData": "True",
    "BinaryDataByteOrderMSB": "False",
    "CompressedData": "False",
    "ElementSpacing": "0.3 0.15",
    "DimSize": "4 3",
    "ElementType": "MET_UCHAR",
    "ElementDataFile": "img.raw",
}


def header_bytes(fields: dict[str, str]) -> bytes:
    """A MetaImage header of ``fields`` in order (``ElementDataFile`` must come last)."""
    return "".join(f"{k} = {v}\n" for k, v in fields.items()).encode("ascii")


def check_metaimage(path: Path) -> None:
    """Read ``path``: a DataError, or an image whose size agrees with its header."""
    image = result_or_own_error(lambda: read_metaimage(path))
    if image is not None:
        dims = [int(v) for v in image.header["DimSize"].split()]
        channels = int(image.header.get("ElementNumberOfChannels", "1"))
        assert image.array.size == math.prod(dims) * channels


@FUZZ
@given(
    lines=st.lists(
        st.one_of(
            st.tuples(st.sampled_from(META_KEYS), meta_values).map(lambda kv: f"{kv[0]} = {kv[1]}".encode()),
            st.binary(max_size=24),
        ),
        max_size=10,
    ),
    data=st.binary(max_size=64),
)
def test_metaimage_garbled_header_lines(lines: list[bytes], data: bytes) -> None:
    """Random key-value lines (known keys with random values, and raw bytes) in a ``.mhd`` header."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "img.mhd"
        path.write_bytes(b"\n".join(lines) + b"\n")
        (Path(d) / "img.raw").write_bytes(data)
        check_metaimage(path)


@FUZZ
@given(key=st.sampled_from(META_KEYS), value=st.one_of(meta_values, st.none()))
@example(key="ElementDataFile", value="")  # was IndexError
@example(key="ElementDataFile", value=" ")
@example(key="ElementDataFile", value="a\x00b.raw")  # was ValueError: embedded null byte
@example(key="ElementNumberOfChannels", value="x")  # was ValueError of int()
@example(key="ElementNumberOfChannels", value="0")  # was ValueError of reshape
@example(key="ElementNumberOfChannels", value="-1")
@example(key="HeaderSize", value="x")  # was ValueError of int()
@example(key="DimSize", value=f"{2**40} {2**40}")  # was an int64 overflow in np.prod
@example(key="DimSize", value=f"{2**70} 1")
@example(key="NDims", value="0")  # was accepted as a 0-d image
def test_metaimage_one_bad_field(key: str, value: str | None) -> None:
    """A valid 4x3 uint8 header with one field replaced by a random value (or deleted: ``None``)."""
    fields = dict(VALID_HEADER)
    data_file = fields.pop("ElementDataFile")
    if value is None:
        fields.pop(key, None)
    else:
        fields[key] = value
    if key == "NDims" and value == "0":
        fields["DimSize"] = fields["ElementSpacing"] = ""
    if key != "ElementDataFile":
        fields["ElementDataFile"] = data_file
    elif value is not None:
        fields["ElementDataFile"] = value
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "img.mhd"
        path.write_bytes(header_bytes(fields))
        (Path(d) / "img.raw").write_bytes(bytes(range(12)))
        check_metaimage(path)


@FUZZ
@given(
    dims=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    etype=st.sampled_from(sorted(ELEMENT_TYPES)),
    delta=st.integers(-40, 40).filter(bool),
)
def test_metaimage_dimsize_disagrees_with_data_length(dims: list[int], etype: str, delta: int) -> None:
    """Data shorter than ``DimSize`` says is a DataError; extra trailing bytes are ignored (as in MetaIO)."""
    nbytes = math.prod(dims) * np.dtype(ELEMENT_TYPES[etype]).itemsize
    fields = {"NDims": str(len(dims)), "DimSize": " ".join(map(str, dims)), "ElementType": etype}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "img.mhd"
        path.write_bytes(header_bytes({**fields, "ElementDataFile": "img.raw"}))
        (Path(d) / "img.raw").write_bytes(bytes(max(0, nbytes + delta)))
        if delta < 0:
            assert "truncated" in raises_own_error(lambda: read_metaimage(path), path)
        else:
            assert read_metaimage(path).array.shape == tuple(reversed(dims))


@FUZZ
@given(etype=st.one_of(ascii_text, st.sampled_from(["MET_UCHAR_ARRAY", "MET_STRING", "met_uchar", "uint8"])))
def test_metaimage_unknown_element_type(etype: str) -> None:
    """An ``ElementType`` outside the MetaIO scalar types names the type."""
    etype = etype.replace("\n", " ").replace("\r", " ")
    if etype.strip() in ELEMENT_TYPES:
        etype = "X" + etype
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "img.mhd"
        path.write_bytes(header_bytes({**VALID_HEADER, "ElementType": etype, "ElementDataFile": "img.raw"}))
        (Path(d) / "img.raw").write_bytes(bytes(12))
        assert "ElementType" in raises_own_error(lambda: read_metaimage(path), path)


@FUZZ
@given(data=st.binary(max_size=80), local=st.booleans())
@example(data=b"", local=False)
@example(data=b"x\x9c", local=False)  # a zlib header and nothing else
def test_metaimage_compressed_data_with_bad_bytes(data: bytes, local: bool) -> None:
    """``CompressedData = True`` followed by random bytes (in a ``.zraw`` or ``LOCAL``)."""
    fields = {**VALID_HEADER, "CompressedData": "True", "ElementDataFile": "LOCAL" if local else "img.zraw"}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / ("img.mha" if local else "img.mhd")
        if local:
            path.write_bytes(header_bytes(fields) + data)
        else:
            path.write_bytes(header_bytes(fields))
            (Path(d) / "img.zraw").write_bytes(data)
        check_metaimage(path)


@FUZZ
@given(
    keep=st.lists(st.sampled_from(sorted(VALID_HEADER)), unique=True),
    extra=st.dictionaries(
        st.from_regex(r"[A-Za-z]{1,12}", fullmatch=True).filter(lambda k: k != "ElementDataFile"),
        st.from_regex(r"[ -~]{0,12}", fullmatch=True),
        max_size=3,
    ),
)
def test_metaimage_missing_element_data_file(keep: list[str], extra: dict[str, str]) -> None:
    """A header without its ``ElementDataFile`` line (any subset of the other fields, plus unknown ones)."""
    fields = {k: VALID_HEADER[k] for k in keep if k != "ElementDataFile"} | extra
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "img.mhd"
        path.write_bytes(header_bytes(fields))
        assert "ElementDataFile" in raises_own_error(lambda: read_metaimage(path), path)


@FUZZ
@given(
    shape=st.lists(st.integers(1, 6), min_size=2, max_size=3),
    dtype=st.sampled_from(["u1", "i2", "f4", "f8"]),
    compress=st.booleans(),
    local=st.booleans(),
    which=st.sampled_from(["header", "data"]),
    fraction=fractions,
)
def test_metaimage_pair_truncated(
    shape: list[int], dtype: str, compress: bool, local: bool, which: str, fraction: float
) -> None:
    """A valid ``.mhd``/``.raw`` pair (or ``.mha``) with the header or the data cut at a random length."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / ("img.mha" if local else "img.mhd")
        write_metaimage(path, np.arange(math.prod(shape)).reshape(shape).astype(dtype), compress=compress)
        target = path if local or which == "header" else path.with_suffix(".zraw" if compress else ".raw")
        full = target.read_bytes()
        target.write_bytes(cut(full, fraction))
        if target.suffix == ".mhd" and len(cut(full, fraction)) == len(full) - 1:
            assert read_metaimage(path).array.shape == tuple(shape)  # only the final newline is gone
        else:
            raises_own_error(lambda: read_metaimage(path), path)


# --------------------------------------------------------------------------------------------- CAMUS

VALID_CFG = {
    "ED": "1",
    "ES": "14",
    "NbFrame": "15",
    "Sex": "F",
    "Age": "57",
    "ImageQuality": "Good",
    "EF": "41.5",
    "FrameRate": "50.0",
}
NUMERIC_KEYS = ("ED", "ES", "NbFrame", "Age", "EF", "LVedv", "LVesv", "LVef", "FrameRate")


def _is_number(text: str) -> bool:
    try:
        float(text.strip())
    except ValueError:
        return False
    return True


@FUZZ
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200)))
@example(text=b"\xff\xfe\x00E")
@example(text="ED: " + "9" * 5000)  # longer than Python's int() digit limit
def test_info_cfg_random_content(text: str | bytes) -> None:
    """Random text (any Unicode) or bytes as ``Info_2CH.cfg``."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "Info_2CH.cfg"
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
        info = result_or_own_error(lambda: read_info_cfg(path))
        if info is not None:
            assert info and all(isinstance(info[k], int | float) for k in NUMERIC_KEYS if k in info)


@FUZZ
@given(key=st.sampled_from(NUMERIC_KEYS), value=st.text(max_size=12).filter(lambda v: not _is_number(v)))
@example(key="ED", value=":")  # (a test-side corner: the value is the separator itself)
def test_info_cfg_non_numeric_value(key: str, value: str) -> None:
    """A numeric field with a non-numeric value names the line."""
    value = (value.replace(":", "").splitlines() or [""])[0]  # one line, no separator
    if _is_number(value):
        value = "x" + value
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "Info_2CH.cfg"
        path.write_text(
            "".join(f"{k}: {v}\n" for k, v in {**VALID_CFG, key: value}.items()), encoding="utf-8"
        )
        assert "is not a number" in raises_own_error(lambda: read_info_cfg(path), path)


@pytest.fixture(scope="module")
def camus_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-patient CAMUS NIfTI release with 16x12 frames, the patient in the official training split."""
    root = tmp_path_factory.mktemp("camus_template")
    write_camus(root, n_patients=1, size=(16, 12))
    write_camus_split(root, {"training": ["patient0001"], "validation": [], "testing": []})
    return root


def build_camus(root: Path, **kw: Any) -> CamusDataset:
    """The one-case CAMUS training split of ``root``, its samples checked against the contract."""
    ds = CamusDataset("train", root=root, views=("2CH",), phases=("ED",), image_size=16, cache=False, **kw)
    for i in range(len(ds)):
        check_sample(ds[i], ds.spec, f"camus[{i}]")
    return ds


@FEW
@given(drop=st.lists(st.sampled_from(sorted(VALID_CFG)), unique=True, min_size=1))
def test_camus_info_cfg_missing_keys(camus_template: Path, drop: list[str]) -> None:
    """``Info_2CH.cfg`` without some keys: only a missing ``ImageQuality`` matters (for its classes)."""
    with tempfile.TemporaryDirectory() as d:
        root = Path(shutil.copytree(camus_template, Path(d) / "camus"))
        cfg = root / "database_nifti" / "patient0001" / "Info_2CH.cfg"
        cfg.write_text("".join(f"{k}: {v}\n" for k, v in VALID_CFG.items() if k not in drop))
        if len(drop) == len(VALID_CFG):
            assert "empty" in raises_own_error(lambda: build_camus(root, class_by="image_quality"), cfg)
        elif "ImageQuality" in drop:
            msg = raises_own_error(lambda: build_camus(root, class_by="image_quality"), cfg)
            assert "no ImageQuality" in msg
        else:
            build_camus(root, class_by="image_quality")


# --------------------------------------------------------------------------------------------- NIfTI


def save_nifti(arr: np.ndarray, path: Path) -> None:
    """Write ``arr`` as NIfTI-1 with an identity affine, whatever its dtype (int64 must be asked for)."""
    nib.save(nib.Nifti1Image(arr, np.eye(4), dtype=arr.dtype if arr.dtype == np.int64 else None), path)


NIFTI_DTYPES = (
    np.uint8,
    np.int16,
    np.int32,
    np.int64,
    np.uint16,
    np.float32,
    np.float64,
    np.complex64,
    np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")]),
)


@pytest.fixture(scope="module")
def nifti_bytes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A small 2D uint8 image and a 4D float32 volume, as ``.nii`` and ``.nii.gz`` bytes."""
    d = tmp_path_factory.mktemp("nifti")
    image, _ = camus_frame(np.random.default_rng(0), (16, 12), 0, 0)
    volume = np.random.default_rng(1).normal(size=(6, 5, 4, 2)).astype(np.float32)
    out = {}
    for name, arr in (("image", image.T.copy()), ("volume", volume)):
        for suffix in (".nii", ".nii.gz"):
            nib.save(nib.Nifti1Image(arr, np.eye(4)), d / f"{name}{suffix}")
            out[name + suffix] = (d / f"{name}{suffix}").read_bytes()
    return out


@FUZZ
@given(
    name=st.sampled_from(["image", "volume"]), suffix=st.sampled_from([".nii", ".nii.gz"]), fraction=fractions
)
def test_nifti_truncated(nifti_bytes: dict[str, bytes], name: str, suffix: str, fraction: float) -> None:
    """A NIfTI file cut at a random byte: a DataError, or (a cut in the gzip trailer) the intact data."""
    full = nifti_bytes[name + suffix]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"{name}{suffix}"
        path.write_bytes(full)
        _, expected = read_nifti(path)
        path.write_bytes(cut(full, fraction))
        out = result_or_own_error(lambda: read_nifti(path))
        if out is not None:
            assert suffix == ".nii.gz" and np.array_equal(out[1], expected)


@FUZZ
@given(data=st.binary(max_size=600), suffix=st.sampled_from([".nii", ".nii.gz"]), gzipped=st.booleans())
def test_nifti_random_bytes(data: bytes, suffix: str, gzipped: bool) -> None:
    """Random bytes (optionally gzip-compressed) named ``.nii``/``.nii.gz``."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"x{suffix}"
        path.write_bytes(gzip.compress(data) if gzipped else data)
        raises_own_error(lambda: read_nifti(path), path)


@FEW
@given(
    which=st.sampled_from(["patient0001_2CH_ED.nii.gz", "patient0001_2CH_ED_gt.nii.gz"]),
    how=st.sampled_from(["truncate", "random"]),
    fraction=fractions,
    data=st.binary(max_size=300),
)
def test_camus_dataset_bad_nifti_bytes(
    camus_template: Path, which: str, how: str, fraction: float, data: bytes
) -> None:
    """A CAMUS image or label map truncated, or replaced by random bytes."""
    with tempfile.TemporaryDirectory() as d:
        root = Path(shutil.copytree(camus_template, Path(d) / "camus"))
        path = root / "database_nifti" / "patient0001" / which
        path.write_bytes(cut(path.read_bytes(), fraction) if how == "truncate" else data)
        if how == "random":
            raises_own_error(lambda: build_camus(root), path)
        else:
            result_or_own_error(lambda: build_camus(root))


@FEW
@given(
    which=st.sampled_from(["image", "mask"]),
    dtype=st.sampled_from(NIFTI_DTYPES),
    shape=st.sampled_from([(12,), (12, 16), (12, 16, 1), (12, 16, 2), (12, 16, 1, 1), (1, 1), (3, 4)]),
    data=st.data(),
)
@example(which="image", dtype=NIFTI_DTYPES[-1], shape=(12, 16), data=None)  # was TypeError of np.isfinite
@example(which="mask", dtype=np.complex64, shape=(12, 16), data=None)
@example(which="image", dtype=np.uint8, shape=(12,), data=None)  # was IndexError on the zooms
def test_camus_dataset_wrong_dtype_and_shape(
    camus_template: Path, which: str, dtype: Any, shape: tuple[int, ...], data: Any
) -> None:
    """A CAMUS image or label map of a random NIfTI dtype and shape with random values."""
    arr = data.draw(arrays(dtype, shape)) if data is not None else np.zeros(shape, dtype)
    with tempfile.TemporaryDirectory() as d:
        root = Path(shutil.copytree(camus_template, Path(d) / "camus"))
        suffix = "" if which == "image" else "_gt"
        path = root / "database_nifti" / "patient0001" / f"patient0001_2CH_ED{suffix}.nii.gz"
        save_nifti(arr, path)
        result_or_own_error(lambda: build_camus(root))


# --------------------------------------------------------------------------------------------- MSD

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
VALID_DECATHLON = {
    "modality": {"0": "FLAIR", "1": "T1w"},
    "labels": {"0": "background", "1": "edema"},
    "training": [{"image": "./imagesTr/BRATS_001.nii.gz", "label": "./labelsTr/BRATS_001.nii.gz"}],
}


def check_decathlon(root: Path) -> None:
    """Read ``root/dataset.json``: a DataError, or entries the dataset can use."""
    meta = result_or_own_error(lambda: read_decathlon_json(root))
    if meta is not None:
        assert sorted(meta["labels"]) == list(range(len(meta["labels"])))
        assert all(isinstance(k, int) and isinstance(v, str) for k, v in meta["modality"].items())
        for entry in meta["training"]:
            assert isinstance(entry["image"], str) and isinstance(entry.get("label") or "", str)


@FUZZ
@given(
    content=st.one_of(
        json_values.map(json.dumps),
        st.builds(
            lambda key, value: json.dumps({**VALID_DECATHLON, key: value}),
            st.sampled_from(sorted(VALID_DECATHLON)),
            json_values,
        ),
        st.builds(
            lambda key, value: json.dumps(
                {**VALID_DECATHLON, "training": [{**VALID_DECATHLON["training"][0], key: value}]}
            ),
            st.sampled_from(["image", "label"]),
            json_values,
        ),
        st.lists(st.sampled_from(sorted(VALID_DECATHLON)), unique=True).map(
            lambda keep: json.dumps({k: VALID_DECATHLON[k] for k in keep})
        ),
        st.text(max_size=60),
    )
)
@example(content="[" * 5000 + "]" * 5000)  # was RecursionError
@example(content="1" * 4400)  # was ValueError: exceeds the limit for integer string conversion
@example(content=json.dumps({**VALID_DECATHLON, "training": [{"image": 3}]}))  # was TypeError in the dataset
@example(content=json.dumps({**VALID_DECATHLON, "training": [{"image": "a.nii.gz", "label": ["x"]}]}))
def test_decathlon_json_random_structures(content: str) -> None:
    """Random JSON values, a valid ``dataset.json`` with one entry replaced or missing, and random text."""
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "dataset.json").write_text(content, encoding="utf-8", errors="surrogatepass")
        check_decathlon(Path(d))


@FUZZ
@given(data=st.binary(max_size=100))
def test_decathlon_json_random_bytes(data: bytes) -> None:
    """Random bytes as ``dataset.json``."""
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "dataset.json").write_bytes(data)
        raises_own_error(lambda: read_decathlon_json(Path(d)), Path(d) / "dataset.json")


@pytest.fixture(scope="module")
def msd_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-case Decathlon layout with ``8x7x6x4`` volumes."""
    root = tmp_path_factory.mktemp("msd_template") / "task"
    write_msd(root, n_cases=1, shape=(8, 7, 6))
    return root


def build_msd(root: Path, **kw: Any) -> MsdBrainDataset:
    """The one-case MSD split of ``root`` (all cases in ``train``), its samples checked."""
    ds = MsdBrainDataset("train", root=root, image_size=8, cache=False, split_fractions={"train": 1.0}, **kw)
    for i in range(len(ds)):
        check_sample(ds[i], ds.spec, f"msd[{i}]")
    return ds


@FEW
@given(
    names=st.lists(
        st.fixed_dictionaries(
            {"image": st.text(min_size=1, max_size=20)},
            optional={"label": st.one_of(st.none(), st.text(max_size=20))},
        ),
        max_size=3,
    )
)
@example(names=[{"image": "imagesTr/a\x00b.nii.gz"}])
@example(names=[{"image": "/nonexistent/x.nii.gz", "label": "../../x.nii.gz"}])
@example(names=[{"image": "imagesTr", "label": "labelsTr"}])  # folders, not files
def test_msd_dataset_random_training_entries(msd_template: Path, names: list[dict[str, Any]]) -> None:
    """``dataset.json`` listing random (missing, odd, folder) file names as training cases."""
    with tempfile.TemporaryDirectory() as d:
        root = Path(shutil.copytree(msd_template, Path(d) / "task"))
        meta = json.loads((root / "dataset.json").read_text())
        (root / "dataset.json").write_text(json.dumps({**meta, "training": names}))
        if not any((root / n["image"]).is_file() for n in names if "\x00" not in n["image"]):
            with pytest.raises(DataError):
                build_msd(root)
        else:
            result_or_own_error(lambda: build_msd(root))


@FEW
@given(
    which=st.sampled_from(["imagesTr", "labelsTr"]),
    how=st.sampled_from(["truncate", "random", "array"]),
    fraction=fractions,
    data=st.binary(max_size=300),
    dtype=st.sampled_from(NIFTI_DTYPES),
    shape=st.sampled_from([(8, 7, 6), (8, 7, 6, 4), (8, 7), (8, 7, 6, 1), (8, 7, 6, 4, 2), (2, 2, 2)]),
    draw=st.data(),
)
@example(
    which="imagesTr", how="array", fraction=0.0, data=b"", dtype=NIFTI_DTYPES[-1], shape=(8, 7, 6), draw=None
)
def test_msd_dataset_bad_volumes(
    msd_template: Path,
    which: str,
    how: str,
    fraction: float,
    data: bytes,
    dtype: Any,
    shape: tuple[int, ...],
    draw: Any,
) -> None:
    """An MSD image or label volume truncated, replaced by random bytes, or of a random dtype and shape."""
    with tempfile.TemporaryDirectory() as d:
        root = Path(shutil.copytree(msd_template, Path(d) / "task"))
        path = root / which / "BRATS_001.nii.gz"
        if how == "truncate":
            path.write_bytes(cut(path.read_bytes(), fraction))
        elif how == "random":
            path.write_bytes(data)
        else:
            arr = draw.draw(arrays(dtype, shape)) if draw is not None else np.ones(shape, dtype)
            save_nifti(arr, path)
        if how == "random":
            raises_own_error(lambda: build_msd(root), path)
        else:
            result_or_own_error(lambda: build_msd(root))


# --------------------------------------------------------------------------------------------- DICOM


@pytest.fixture(scope="module")
def dicom_bytes() -> bytes:
    """The bytes of pydicom's ``MR_small.dcm`` (64x64, 16-bit, 9.8 kB)."""
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("MR_small.dcm")).read_bytes()


@FUZZ
@given(fraction=fractions)
def test_dicom_truncated(dicom_bytes: bytes, fraction: float) -> None:
    """A real DICOM file cut at a random byte: a DataError, or the intact frames."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "MR_small.dcm"
        path.write_bytes(dicom_bytes)
        expected, _ = dicom_frames(path)
        path.write_bytes(cut(dicom_bytes, fraction))
        out = result_or_own_error(lambda: dicom_frames(path))
        if out is not None:
            assert np.array_equal(out[0], expected)


@FUZZ
@given(data=st.binary(max_size=300), marker=st.booleans())
def test_dicom_random_bytes(data: bytes, marker: bool) -> None:
    """Random bytes named ``.dcm``, with or without the ``DICM`` preamble marker."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.dcm"
        path.write_bytes(bytes(128) + b"DICM" + data if marker else data)
        raises_own_error(lambda: dicom_frames(path), path)


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(128, 1200), st.integers(0, 255)), min_size=1, max_size=8))
def test_dicom_corrupted_header_bytes(dicom_bytes: bytes, edits: list[tuple[int, int]]) -> None:
    """A real DICOM file with random bytes of its header overwritten."""
    data = bytearray(dicom_bytes)
    for pos, value in edits:
        data[pos] = value
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.dcm"
        path.write_bytes(bytes(data))
        out = result_or_own_error(lambda: dicom_frames(path))
        if out is not None:
            frames = out[0]
            assert frames.ndim == 3 and np.isfinite(frames).all() and np.abs(frames).max() <= 1.0


@FEW
@given(fraction=fractions, data=st.binary(max_size=100))
def test_dicom_dataset_with_a_truncated_file(dicom_bytes: bytes, fraction: float, data: bytes) -> None:
    """A DICOM folder with one truncated file and one random ``.dcm``: the dataset reports or skips them."""
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "dicom"
        (root / "a").mkdir(parents=True)
        (root / "a" / "MR_small.dcm").write_bytes(cut(dicom_bytes, fraction))
        (root / "b.dcm").write_bytes(data)

        def build() -> DicomDataset:
            ds = DicomDataset(
                "train",
                root=root,
                image_size=16,
                group_by="file",
                cache=False,
                split_fractions={"train": 1.0},
            )
            check_sample(ds[0], ds.spec)
            return ds

        result_or_own_error(build)


# --------------------------------------------------------------------------------------------- legacy pickle

images = st.one_of(
    arrays(np.float32, st.sampled_from([(8, 8), (1, 8, 8), (2, 8, 8)]), elements=st.floats(0, 255, width=32)),
    arrays(
        st.sampled_from([np.float64, np.int16, np.uint8, np.complex64, np.bool_, "<U2"]),
        st.sampled_from([(), (8,), (8, 8), (1, 8, 8), (5, 8, 8), (1, 1, 8, 8), (0, 8), (1, 0, 8)]),
    ),
    json_values,
)
entries = st.one_of(
    st.fixed_dictionaries(
        {"image": images},
        optional={
            "mask": st.one_of(
                images, arrays(np.float64, (8, 8), elements=st.sampled_from([0.0, 1 / 3, 2 / 3, 1.0]))
            ),
            "class": st.one_of(
                st.sampled_from(["2CH_ED", "4CH_ES"]), st.integers(-2, 2**62), st.floats(), json_values
            ),
            "metadata": json_values | st.dictionaries(st.tuples(st.integers()), st.integers(), max_size=2),
            "name": json_values,
        },
    ),
    json_values,
)
pickled_structures = st.one_of(
    st.dictionaries(
        st.sampled_from(["train", "valid", "val", "test", "other"]), st.lists(entries, max_size=3)
    ),
    st.dictionaries(st.sampled_from(["train", "valid"]), json_values),
    json_values,
)


@FUZZ
@given(fraction=fractions)
def test_legacy_pickle_truncated(fraction: float) -> None:
    """An original MOTFM pickle cut at a random byte."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "data.pkl"
        write_legacy_pickle(path, counts={"train": 2, "valid": 1}, size=8)
        path.write_bytes(cut(path.read_bytes(), fraction))
        msg = raises_own_error(
            lambda: LegacyPickleDataset("train", root=path, trust_pickle=True, cache=False), path
        )
        assert "cannot unpickle" in msg


@FUZZ
@given(structure=pickled_structures, skip=st.booleans())
@example(structure={"train": [{"image": np.array(["ab", "cd"])}]}, skip=False)  # was ValueError of numpy
@example(structure={"train": [{"image": np.zeros((1, 0, 8))}]}, skip=False)  # was ValueError: zero-size min
@example(structure={"train": [{"image": np.zeros((8, 8)), "class": 2**62}]}, skip=False)  # was a hang
@example(structure={"train": [{"image": np.zeros((8, 8)), "class": [1]}]}, skip=False)  # was TypeError
@example(structure={"train": [{"image": np.zeros((8, 8)), "mask": np.array([["a"] * 8] * 8)}]}, skip=False)
@example(structure={"train": [{"image": np.zeros((8, 8)), "metadata": {(1,): 2}}]}, skip=False)
@example(structure={"train": [{"image": np.zeros((9, 8, 8))}]}, skip=True)  # was StopIteration
def test_legacy_pickle_wrong_structures(structure: Any, skip: bool) -> None:
    """Pickles of wrong structures: lists, dicts with wrong keys, entries with arrays of wrong dims/dtypes."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "data.pkl"
        path.write_bytes(pickle.dumps(structure))

        def build() -> LegacyPickleDataset:
            ds = LegacyPickleDataset("train", root=path, trust_pickle=True, cache=False, skip_bad_cases=skip)
            for i in range(len(ds)):
                check_sample(ds[i], ds.spec, f"pickle[{i}]")
            return ds

        result_or_own_error(build)


# --------------------------------------------------------------------------------------------- mask files

MASK_SPEC_2D = DataSpec(spatial_dims=2, channels=1, image_size=(6, 5), num_mask_labels=4)
MASK_SPEC_3D = DataSpec(spatial_dims=3, channels=1, image_size=(4, 5, 3), num_mask_labels=4)
NPY_DTYPES = (
    *NIFTI_DTYPES,
    np.bool_,
    np.int8,
    np.float16,
    "<U2",
    "M8[s]",
    np.dtype([("a", "u1"), ("b", "f4")]),
)


@FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".png", ".npy", ".nii", ".nii.gz", ".txt"]))
@example(data=b"\x93NUMPY", suffix=".npy")
@example(data=b"\x89PNG\r\n\x1a\n", suffix=".png")
def test_mask_file_random_bytes(data: bytes, suffix: str) -> None:
    """Random bytes named as a mask file."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"mask{suffix}"
        path.write_bytes(data)
        raises_own_error(lambda: read_mask_file(path, MASK_SPEC_2D), path)


@FUZZ
@given(
    fmt=st.sampled_from(["npy", "nii.gz", "png"]),
    spec=st.sampled_from([MASK_SPEC_2D, MASK_SPEC_3D]),
    draw=st.data(),
)
@example(fmt="npy", spec=MASK_SPEC_2D, draw=None)  # structured dtype: was TypeError of np.isfinite
def test_mask_file_wrong_dtype_shape_values(fmt: str, spec: DataSpec, draw: Any) -> None:
    """Mask files of random dtypes, shapes (right, transposed, extra axes), values (floats, out of range)."""
    size = spec.image_size
    shapes = [size, size[::-1], (1, *size), (*size, 1), (*size, 2), size[:-1], (2, 2)]
    if draw is None:
        arr = np.zeros(size, NPY_DTYPES[-1])
    elif fmt == "png":
        shape = draw.draw(
            st.sampled_from([s for s in shapes if len(s) == 2] + [(*MASK_SPEC_2D.image_size, 3)])
        )
        dtype = draw.draw(st.sampled_from([np.uint8, np.uint16] if len(shape) == 2 else [np.uint8]))
        arr = draw.draw(arrays(dtype, shape, elements=st.integers(0, 6)) | arrays(dtype, shape))
    else:
        dtype = draw.draw(st.sampled_from(NPY_DTYPES if fmt == "npy" else NIFTI_DTYPES))
        shape = draw.draw(st.sampled_from(shapes))
        kind = np.dtype(dtype).kind
        strategy = arrays(dtype, shape)
        if kind in "iuf":  # also small integers, so that some masks are valid
            strategy |= arrays(dtype, shape, elements=st.integers(0 if kind == "u" else -1, 5))
        arr = draw.draw(strategy)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"mask.{fmt}"
        if fmt == "npy":
            np.save(path, arr)
        elif fmt == "png":
            Image.fromarray(arr).save(path)
        else:
            save_nifti(arr, path)
        mask = result_or_own_error(lambda: read_mask_file(path, spec))
        if mask is not None:
            assert mask.dtype == torch.int64 and tuple(mask.shape) == (1, *size)
            assert int(mask.min()) >= 0 and int(mask.max()) < spec.num_mask_labels


# --------------------------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a small checkpoint laid out as the trainer writes it (``motfm`` section, state dict)."""
    spec = DataSpec(spatial_dims=2, channels=1, image_size=(8, 8), num_classes=2)
    ckpt = {
        "motfm": {"config": {"model": {"channels": [8]}}, "data_spec": spec.to_dict(), "format": 1},
        "state_dict": {"net.w": torch.randn(16, 8), "ema.module.w": torch.randn(16, 8)},
        "global_step": 3,
    }
    path = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    torch.save(ckpt, path)
    assert read_checkpoint(path)["global_step"] == 3
    return path.read_bytes()


@FUZZ
@given(fraction=fractions)
def test_checkpoint_truncated(checkpoint_bytes: bytes, fraction: float) -> None:
    """A real checkpoint cut at a random byte."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "last.ckpt"
        path.write_bytes(cut(checkpoint_bytes, fraction))
        assert "cannot be read" in raises_own_error(lambda: read_checkpoint(path), path, CheckpointError)


@FUZZ
@given(data=st.binary(max_size=400), zipped=st.booleans())
def test_checkpoint_random_bytes(checkpoint_bytes: bytes, data: bytes, zipped: bool) -> None:
    """Random bytes, or random bytes behind the zip signature of a torch file."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.ckpt"
        path.write_bytes(checkpoint_bytes[:30] + data if zipped else data)
        raises_own_error(lambda: read_checkpoint(path), path, CheckpointError)


@FUZZ
@given(
    structure=st.one_of(
        json_values,
        st.dictionaries(st.sampled_from(["motfm", "state_dict", "x"]), json_values),
        st.builds(lambda m, s: {"motfm": m, "state_dict": s}, json_values, json_values),
    )
)
@example(structure={"motfm": 1, "state_dict": {}})  # was KeyError/TypeError in load_model
@example(structure={"motfm": {"config": {}, "data_spec": {"x": 1}}, "state_dict": {}})
def test_checkpoint_wrong_structures(structure: Any) -> None:
    """``torch.save`` of wrong structures: read_checkpoint must refuse what load_model cannot use."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.ckpt"
        torch.save(structure, path)
        ckpt = result_or_own_error(lambda: read_checkpoint(path), CheckpointError)
        if ckpt is not None:
            DataSpec.from_dict(ckpt["motfm"]["data_spec"])
            assert isinstance(ckpt["motfm"]["config"]["model"], dict) and isinstance(ckpt["state_dict"], dict)
