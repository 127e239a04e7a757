"""MetaImage reader/writer: exhaustive round trips and every malformed-file message."""

import itertools
import zlib
from pathlib import Path

import numpy as np
import pytest

from motfm.data.base import DataError
from motfm.data.metaimage import ELEMENT_TYPES, read_header, read_metaimage, write_metaimage


def _array(dtype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.normal(0, 1e3, shape).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, shape, dtype=dt, endpoint=True)


@pytest.mark.parametrize("dtype", sorted(set(ELEMENT_TYPES.values())))
def test_round_trip_every_type_layout_and_option(tmp_path: Path, dtype: str) -> None:
    rng = np.random.default_rng(0)
    shapes = [(5,), (7, 3), (4, 6, 5), (2, 3, 4, 2)]
    options = itertools.product(shapes, [False, True], [False, True], [False, True], [False, True])
    for i, (shape, compress, msb, local, channels) in enumerate(options):
        array = _array(dtype, (*shape, 3) if channels else shape, rng)
        ndims = len(shape)
        spacing = tuple(0.1 * (k + 1) for k in range(ndims))
        offset = tuple(-5.0 + k for k in range(ndims))
        path = tmp_path / f"img{i}.{'mha' if local else 'mhd'}"
        write_metaimage(
            path,
            array,
            spacing,
            offset,
            compress=compress,
            byte_order_msb=msb,
            local=local,
            channels=channels,
        )
        mi = read_metaimage(path)
        assert mi.array.dtype == array.dtype.newbyteorder("=")
        assert mi.array.shape == array.shape
        np.testing.assert_array_equal(mi.array, array)
        assert mi.spacing == pytest.approx(spacing) and mi.offset == pytest.approx(offset)
        assert mi.header["ElementType"] in ELEMENT_TYPES


def test_axis_order_is_reversed_dimsize_x_fastest(tmp_path: Path) -> None:
    """DimSize = 4 3 (x=4 columns, y=3 rows): the first 4 stored values are row 0."""
    (tmp_path / "a.raw").write_bytes(bytes(range(12)))
    (tmp_path / "a.mhd").write_text(
        "ObjectType = Image\nNDims = 2\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        "ElementSpacing = 0.5 0.25\nDimSize = 4 3\nElementType = MET_UCHAR\nElementDataFile = a.raw\n"
    )
    mi = read_metaimage(tmp_path / "a.mhd")
    assert mi.array.shape == (3, 4)
    np.testing.assert_array_equal(mi.array[0], [0, 1, 2, 3])
    assert mi.spacing == (0.5, 0.25)


def test_list_files_header_size_and_big_endian(tmp_path: Path) -> None:
    slices = [np.full((2, 3), i, dtype=">i2") for i in range(3)]
    for i, s in enumerate(slices):
        (tmp_path / f"s{i}.raw").write_bytes(s.tobytes())
    (tmp_path / "list.mhd").write_text(
        "NDims = 3\nDimSize = 3 2 3\nElementType = MET_SHORT\nElementByteOrderMSB = True\n"
        "ElementDataFile = LIST\ns0.raw\ns1.raw\ns2.raw\n"
    )
    mi = read_metaimage(tmp_path / "list.mhd")
    np.testing.assert_array_equal(mi.array, np.stack(slices).astype(np.int16))
    (tmp_path / "h.raw").write_bytes(b"JUNKJUNK" + np.arange(6, dtype="<f4").tobytes())
    (tmp_path / "h.mhd").write_text(
        "NDims = 2\nDimSize = 3 2\nHeaderSize = -1\nElementType = MET_FLOAT\nElementDataFile = h.raw\n"
    )
    np.testing.assert_array_equal(read_metaimage(tmp_path / "h.mhd").array, np.arange(6).reshape(2, 3))
    (tmp_path / "h.mhd").write_text(
        "NDims = 2\nDimSize = 3 2\nHeaderSize = 8\nElementType = MET_FLOAT\nElementDataFile = h.raw\n"
    )
    np.testing.assert_array_equal(read_metaimage(tmp_path / "h.mhd").array, np.arange(6).reshape(2, 3))


def test_header_helper_returns_fields_and_data_offset(tmp_path: Path) -> None:
    write_metaimage(tmp_path / "x.mha", np.arange(6, dtype=np.uint8).reshape(2, 3))
    fields, offset, files = read_header(tmp_path / "x.mha")
    assert fields["DimSize"] == "3 2" and fields["ElementDataFile"] == "LOCAL" and files == []
    assert (tmp_path / "x.mha").read_bytes()[offset:] == bytes(range(6))


HEADER = "ObjectType = Image\nNDims = 2\nDimSize = 4 3\nElementType = MET_UCHAR\nElementDataFile = d.raw\n"


@pytest.mark.parametrize(
    ("header", "data", "message"),
    [
        (HEADER, bytes(5), "truncated"),
        (HEADER, None, "missing or unreadable"),
        (HEADER.replace("MET_UCHAR", "MET_QUAD"), bytes(12), "ElementType 'MET_QUAD'"),
        (HEADER.replace("NDims = 2", "NDims = x"), bytes(12), "NDims"),
        (HEADER.replace("DimSize = 4 3", "DimSize = 4"), bytes(12), "DimSize has 1 values"),
        (HEADER.replace("DimSize = 4 3", "DimSize = 4 0"), bytes(12), "non-positive"),
        (HEADER.replace("ElementDataFile = d.raw\n", ""), bytes(12), "no ElementDataFile"),
        (HEADER.replace("NDims = 2", "NDims 2"), bytes(12), "malformed MetaImage header line"),
        (HEADER.replace("ObjectType = Image", "ObjectType = Tube"), bytes(12), "ObjectType"),
        (HEADER.replace("ElementDataFile", "CompressedData = True\nElementDataFile"), b"not zlib", "corrupt"),
        (HEADER.replace("ElementDataFile", "CompressedData = Maybe\nElementDataFile"), bytes(12), "boolean"),
        (HEADER.replace("d.raw", "slice%03d.raw 1 3 1"), bytes(12), "patterns"),
    ],
)
def test_malformed_files_name_the_file_and_the_problem(
    tmp_path: Path, header: str, data: bytes | None, message: str
) -> None:
    (tmp_path / "x.mhd").write_text(header)
    if data is not None:
        (tmp_path / "d.raw").write_bytes(data)
    with pytest.raises(DataError, match=message) as e:
        read_metaimage(tmp_path / "x.mhd")
    assert str(tmp_path / "x.mhd") in str(e.value)


def test_binary_garbage_and_missing_header(tmp_path: Path) -> None:
    (tmp_path / "b.mhd").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(DataError, match="not a MetaImage header"):
        read_metaimage(tmp_path / "b.mhd")
    with pytest.raises(DataError, match="cannot read MetaImage header"):
        read_metaimage(tmp_path / "nope.mhd")


def test_compressed_data_is_zlib(tmp_path: Path) -> None:
    array = np.arange(24, dtype=np.uint16).reshape(4, 6)
    write_metaimage(tmp_path / "z.mhd", array, compress=True)
    assert np.array_equal(
        np.frombuffer(zlib.decompress((tmp_path / "z.zraw").read_bytes()), "<u2"), array.ravel()
    )
    assert "CompressedDataSize" in (tmp_path / "z.mhd").read_text()
