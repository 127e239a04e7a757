"""A small reader and writer of MetaImage (``.mhd`` + ``.raw``, or ``.mha``) files, the format of the CAMUS
challenge release, so that SimpleITK/ITK is not needed.

A MetaImage header is a list of ``Key = Value`` lines; the last one, ``ElementDataFile``, names the pixel
data: ``LOCAL`` (the data follows the header in the same file, as in ``.mha``), a file name relative to the
header (``.raw``, ``.zraw``), or ``LIST`` followed by one file name per line (one file per slice of the last
axis). The data are stored with the first axis (``x``) varying fastest, so the array returned here has the
*reversed* axis order of ``DimSize``: ``[..., y, x]`` (plus a trailing channel axis when
``ElementNumberOfChannels`` is above 1), the same convention as ``SimpleITK.GetArrayFromImage``. Spacing and
origin are kept in file order ``(x, y, ...)``.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from motfm.data.base import DataError
from motfm.io.atomic import atomic_path

# MetaIO element types (metaTypes.h): MET_LONG/MET_ULONG are 32-bit.
ELEMENT_TYPES: dict[str, str] = {
    "MET_CHAR": "i1",
    "MET_UCHAR": "u1",
    "MET_SHORT": "i2",
    "MET_USHORT": "u2",
    "MET_INT": "i4",
    "MET_UINT": "u4",
    "MET_LONG": "i4",
    "MET_ULONG": "u4",
    "MET_LONG_LONG": "i8",
    "MET_ULONG_LONG": "u8",
    "MET_FLOAT": "f4",
    "MET_DOUBLE": "f8",
}
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


@dataclass
class MetaImage:
    """A MetaImage read from disk.

    Attributes:
        array: pixel data, shape ``DimSize`` reversed (``[y, x]`` in 2D, ``[z, y, x]`` in 3D), plus a trailing
            channel axis when there is more than one channel.
        spacing: ``ElementSpacing`` in file order ``(x, y, ...)`` (ones when absent).
        offset: ``Offset``/``Position``/``Origin`` in file order (zeros when absent).
        header: every header field as read (strings).
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    offset: tuple[float, ...]
    header: dict[str, str] = field(default_factory=dict)


def _parse_bool(value: str, key: str, path: Path) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise DataError(f"{path}: MetaImage field {key} = {value!r} is not a boolean")


def _parse_numbers(value: str, key: str, path: Path, count: int, kind: type = float) -> tuple:
    try:
        numbers = tuple(kind(v) for v in value.split())
    except ValueError:
        raise DataError(f"{path}: MetaImage field {key} = {value!r} is not a list of numbers") from None
    if len(numbers) != count:
        raise DataError(f"{path}: MetaImage field {key} has {len(numbers)} values, NDims is {count}")
    return numbers


def _parse_int(fields: dict[str, str], key: str, default: str, path: Path, minimum: int) -> int:
    try:
        value = int(fields.get(key, default))
    except ValueError:
        raise DataError(f"{path}: MetaImage field {key} = {fields[key]!r} is not an integer") from None
    if value < minimum:
        raise DataError(f"{path}: MetaImage field {key} = {value} is below {minimum}")
    return value


def read_header(path: str | Path) -> tuple[dict[str, str], int, list[str]]:
    """Parse a MetaImage header.

    Args:
        path: the ``.mhd``/``.mha`` file.

    Returns:
        ``(fields, data_offset, list_files)``: the header fields (keys as written), the byte offset just after
        the ``ElementDataFile`` line (where ``LOCAL`` data starts), and the file names following
        ``ElementDataFile = LIST`` (empty otherwise).

    Raises:
        DataError: when the file is missing, not text, or has no ``ElementDataFile`` line.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read MetaImage header ({e.strerror or e})") from None
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(raw):
        end = raw.find(b"\n", pos)
        end = len(raw) if end < 0 else end
        try:
            line = raw[pos:end].decode("ascii").strip()
        except UnicodeDecodeError:
            raise DataError(f"{path}: not a MetaImage header (binary data before ElementDataFile)") from None
        pos = end + 1
        if not line:
            continue
        if "=" not in line:
            raise DataError(f"{path}: malformed MetaImage header line {line!r} (expected 'Key = Value')")
        key, value = (s.strip() for s in line.split("=", 1))
        fields[key] = value
        if key == "ElementDataFile":
            list_files: list[str] = []
            if value and value.split()[0].upper() == "LIST":
                list_files = [
                    ln.strip() for ln in raw[pos:].decode("ascii", "replace").splitlines() if ln.strip()
                ]
            return fields, pos, list_files
    raise DataError(f"{path}: MetaImage header has no ElementDataFile line")


def read_metaimage(path: str | Path) -> MetaImage:
    """Read a MetaImage file (``.mhd`` with its data file, or a single ``.mha``).

    Args:
        path: the header file.

    Returns:
        The image; see :class:`MetaImage` for the axis order.

    Raises:
        DataError: naming the file, for a malformed header, an unsupported field value, missing or truncated
            data, or corrupt compressed data.
    """
    path = Path(path)
    fields, data_offset, list_files = read_header(path)
    if fields.get("ObjectType", "Image").lower() != "image":
        raise DataError(f"{path}: MetaImage ObjectType is {fields['ObjectType']!r}, expected 'Image'")
    try:
        ndims = int(fields["NDims"])
    except (KeyError, ValueError):
        raise DataError(f"{path}: MetaImage NDims is missing or not an integer") from None
    if ndims < 1:
        raise DataError(f"{path}: MetaImage NDims = {ndims} is not positive")
    if "DimSize" not in fields:
        raise DataError(f"{path}: MetaImage DimSize is missing")
    dims = _parse_numbers(fields["DimSize"], "DimSize", path, ndims, int)
    if any(d < 1 for d in dims):
        raise DataError(f"{path}: MetaImage DimSize {dims} has a non-positive size")
    etype = fields.get("ElementType", "")
    if etype not in ELEMENT_TYPES:
        raise DataError(f"{path}: MetaImage ElementType {etype!r} is not one of {sorted(ELEMENT_TYPES)}")
    msb_key = next((k for k in ("BinaryDataByteOrderMSB", "ElementByteOrderMSB") if k in fields), None)
    msb = _parse_bool(fields[msb_key], msb_key, path) if msb_key else False
    compressed = _parse_bool(fields.get("CompressedData", "False"), "CompressedData", path)
    channels = _parse_int(fields, "ElementNumberOfChannels", "1", path, 1)
    dtype = np.dtype(ELEMENT_TYPES[etype]).newbyteorder(">" if msb else "<")
    spacing_key = next((k for k in ("ElementSpacing", "ElementSize") if k in fields), None)
    spacing = _parse_numbers(fields[spacing_key], spacing_key, path, ndims) if spacing_key else (1.0,) * ndims
    offset_key = next((k for k in ("Offset", "Position", "Origin") if k in fields), None)
    offset = _parse_numbers(fields[offset_key], offset_key, path, ndims) if offset_key else (0.0,) * ndims

    data = _read_data(path, fields, data_offset, list_files, compressed)
    count = math.prod(dims) * channels  # Python ints: no overflow for absurd sizes
    nbytes = count * dtype.itemsize
    header_size = _parse_int(fields, "HeaderSize", "0", path, -1)
    if header_size == -1:  # the data are the last bytes of the file
        data = data[len(data) - nbytes :] if len(data) >= nbytes else data
    elif header_size > 0:
        data = data[header_size:]
    if len(data) < nbytes:
        raise DataError(
            f"{path}: MetaImage data are truncated: {len(data)} bytes, expected {nbytes} for {dims}"
        )
    array = np.frombuffer(data, dtype=dtype, count=count).astype(dtype.newbyteorder("="))
    shape = tuple(reversed(dims)) + ((channels,) if channels > 1 else ())
    return MetaImage(array.reshape(shape), tuple(map(float, spacing)), tuple(map(float, offset)), fields)


def _read_data(
    path: Path, fields: dict[str, str], data_offset: int, list_files: list[str], compressed: bool
) -> bytes:
    """The (decompressed) pixel bytes named by ``ElementDataFile``."""
    name = fields["ElementDataFile"]
    if not name:
        raise DataError(f"{path}: MetaImage ElementDataFile is empty")
    if name.upper() == "LOCAL":
        chunks = [path.read_bytes()[data_offset:]]
    elif name.split()[0].upper() == "LIST":
        chunks = [_read_file(path.parent / f, path) for f in list_files]
    elif "%" in name:
        raise DataError(f"{path}: MetaImage file-name patterns ({name!r}) are not supported")
    else:
        chunks = [_read_file(path.parent / name, path)]
    if not compressed:
        return b"".join(chunks)
    try:
        return b"".join(zlib.decompress(c) for c in chunks)
    except zlib.error as e:
        raise DataError(f"{path}: MetaImage compressed data are corrupt ({e})") from None


def _read_file(data_path: Path, header_path: Path) -> bytes:
    try:
        return data_path.read_bytes()
    except (OSError, ValueError):  # ValueError: a NUL byte in the name
        raise DataError(f"{header_path}: MetaImage data file {data_path} is missing or unreadable") from None


def write_metaimage(
    path: str | Path,
    array: np.ndarray,
    spacing: tuple[float, ...] | None = None,
    offset: tuple[float, ...] | None = None,
    *,
    compress: bool = False,
    byte_order_msb: bool = False,
    local: bool = False,
    channels: bool = False,
) -> None:
    """Write ``array`` as a MetaImage, atomically.

    Args:
        path: the header path (``.mhd``; the data go to the same name with ``.raw``/``.zraw``), or ``.mha``.
        array: pixel data ``[..., y, x]`` (``[..., y, x, c]`` when ``channels``), one of the dtypes of
            :data:`ELEMENT_TYPES`.
        spacing: ``ElementSpacing`` in file order ``(x, y, ...)``; ones by default.
        offset: ``Offset`` in file order; zeros by default.
        compress: zlib-compress the data (``CompressedData = True``).
        byte_order_msb: write big-endian data.
        local: store the data in the header file (``ElementDataFile = LOCAL``); implied by a ``.mha`` path.
        channels: the last axis of ``array`` holds channels (``ElementNumberOfChannels``).
    """
    path = Path(path)
    array = np.asarray(array)
    spatial = array.shape[:-1] if channels else array.shape
    ndims = len(spatial)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in reversed(ELEMENT_TYPES.items())}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise ValueError(f"write_metaimage: unsupported dtype {array.dtype}")
    spacing = tuple(spacing) if spacing is not None else (1.0,) * ndims
    offset = tuple(offset) if offset is not None else (0.0,) * ndims
    if len(spacing) != ndims or len(offset) != ndims:
        raise ValueError(f"write_metaimage: spacing/offset need {ndims} values")
    data = np.ascontiguousarray(array, dtype=native.newbyteorder(">" if byte_order_msb else "<")).tobytes()
    if compress:
        data = zlib.compress(data)
    local = local or path.suffix.lower() == ".mha"
    data_path = path.with_suffix(".zraw" if compress else ".raw")
    lines = [
        "ObjectType = Image",
        f"NDims = {ndims}",
        "BinaryData = True",
        f"BinaryDataByteOrderMSB = {byte_order_msb}",
        f"CompressedData = {compress}",
        *([f"CompressedDataSize = {len(data)}"] if compress else []),
        "TransformMatrix = " + " ".join("1" if i == j else "0" for i in range(ndims) for j in range(ndims)),
        "Offset = " + " ".join(repr(float(v)) for v in offset),
        "ElementSpacing = " + " ".join(repr(float(v)) for v in spacing),
        "DimSize = " + " ".join(str(d) for d in reversed(spatial)),
        *([f"ElementNumberOfChannels = {array.shape[-1]}"] if channels else []),
        f"ElementType = {codes[native]}",
        f"ElementDataFile = {'LOCAL' if local else data_path.name}",
    ]
    header = ("\n".join(lines) + "\n").encode("ascii")
    if local:
        with atomic_path(path) as tmp:
            tmp.write_bytes(header + data)
        return
    with atomic_path(data_path) as tmp:
        tmp.write_bytes(data)
    with atomic_path(path) as tmp:
        tmp.write_bytes(header)
