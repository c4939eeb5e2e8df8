#!/usr/bin/env python3
"""An independent safetensors reader, written from the published format
(https://github.com/huggingface/safetensors), stdlib only.

    safetensors_reader.py FILE                 validate, print every tensor
    safetensors_reader.py FILE EXPECTED.json   validate, compare with EXPECTED

EXPECTED.json: {"tensor name": {"dtype": "F32", "shape": [2, 3],
"values": [flat C-order values]}, ..., "__metadata__": {...}}; "values" is
optional. The file must hold exactly the expected tensors. F32 values compare
after rounding the expected value to float32; other dtypes compare exactly.

Exit 0 when the file is valid (and matches), 1 with a message otherwise.
"""
import json
import struct
import sys

# dtype -> (bytes per element, struct code or None when not decoded here)
DTYPES = {
    "BOOL": (1, "?"), "U8": (1, "B"), "I8": (1, "b"),
    "I16": (2, "h"), "U16": (2, "H"), "I32": (4, "i"), "U32": (4, "I"),
    "I64": (8, "q"), "U64": (8, "Q"),
    "F16": (2, "e"), "BF16": (2, None), "F32": (4, "f"), "F64": (8, "d"),
    "F8_E5M2": (1, None), "F8_E4M3": (1, None),
}


class FormatError(Exception):
    pass


def parse(path):
    """Returns (metadata, {name: (dtype, shape, raw bytes)})."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise FormatError("%s: %d bytes, no room for the header length" % (path, len(blob)))
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8:
        raise FormatError("%s: header length %d exceeds the %d bytes after it" % (path, n, len(blob) - 8))
    raw_header = blob[8:8 + n]
    if not raw_header.startswith(b"{"):
        raise FormatError("%s: header does not start with '{'" % path)
    try:
        text = raw_header.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError("%s: header is not UTF-8: %s" % (path, e))

    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            raise FormatError("%s: duplicate key in header" % path)
        return dict(pairs)

    try:
        header = json.loads(text, object_pairs_hook=no_duplicates)
    except ValueError as e:
        raise FormatError("%s: header is not JSON: %s" % (path, e))
    if not isinstance(header, dict):
        raise FormatError("%s: header is not an object" % path)
    data = blob[8 + n:]

    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise FormatError("%s: __metadata__ must map strings to strings" % path)

    entries = []
    for name, e in header.items():
        if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
            raise FormatError("%s: tensor %r: entry must hold exactly dtype, shape, data_offsets" % (path, name))
        dtype, shape, offsets = e["dtype"], e["shape"], e["data_offsets"]
        if dtype not in DTYPES:
            raise FormatError("%s: tensor %r: unknown dtype %r" % (path, name, dtype))
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise FormatError("%s: tensor %r: bad shape %r" % (path, name, shape))
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)):
            raise FormatError("%s: tensor %r: bad data_offsets %r" % (path, name, offsets))
        count = 1
        for d in shape:
            count *= d
        begin, end = offsets
        if end - begin != count * DTYPES[dtype][0]:
            raise FormatError("%s: tensor %r: data_offsets %r do not fit %s %r" % (path, name, offsets, dtype, shape))
        entries.append((begin, end, name, dtype, shape))

    # The buffer must be covered exactly: no gaps, no overlaps, nothing after.
    entries.sort()
    pos = 0
    for begin, end, name, _, _ in entries:
        if begin != pos:
            raise FormatError("%s: tensor %r begins at %d, expected %d" % (path, name, begin, pos))
        pos = end
    if pos != len(data):
        raise FormatError("%s: tensors cover %d bytes, the data section holds %d" % (path, pos, len(data)))

    tensors = {}
    for begin, end, name, dtype, shape in entries:
        tensors[name] = (dtype, shape, data[begin:end])
    return metadata, tensors


def decode(dtype, raw):
    size, code = DTYPES[dtype]
    count = len(raw) // size
    if dtype == "BF16":
        halves = struct.unpack("<%dH" % count, raw)
        return [struct.unpack("<f", struct.pack("<I", h << 16))[0] for h in halves]
    if code is None:
        return None
    return list(struct.unpack("<%d%s" % (count, code), raw))


def as_f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def check(metadata, tensors, expected):
    problems = []
    want_meta = expected.pop("__metadata__", None)
    if want_meta is not None and want_meta != metadata:
        problems.append("metadata %r, expected %r" % (metadata, want_meta))
    if set(tensors) != set(expected):
        problems.append("tensors %s, expected %s" % (sorted(tensors), sorted(expected)))
    for name, want in expected.items():
        if name not in tensors:
            continue
        dtype, shape, raw = tensors[name]
        if dtype != want["dtype"] or shape != want["shape"]:
            problems.append("%r: %s %r, expected %s %r" % (name, dtype, shape, want["dtype"], want["shape"]))
            continue
        if "values" not in want:
            continue
        got = decode(dtype, raw)
        ref = want["values"]
        if dtype == "F32":
            ref = [as_f32(v) for v in ref]
        if got != ref:
            problems.append("%r: values %r, expected %r" % (name, got, ref))
    return problems


def main(argv):
    if len(argv) not in (2, 3):
        sys.stderr.write(__doc__)
        return 2
    try:
        metadata, tensors = parse(argv[1])
    except (FormatError, OSError) as e:
        print("safetensors_reader: invalid: %s" % e)
        return 1
    if len(argv) == 2:
        if metadata:
            print("__metadata__ %s" % json.dumps(metadata, sort_keys=True))
        for name in sorted(tensors):
            dtype, shape, raw = tensors[name]
            print("%s %s %s %r" % (name, dtype, shape, decode(dtype, raw)))
        return 0
    with open(argv[2], "r", encoding="utf-8") as f:
        expected = json.load(f)
    problems = check(metadata, tensors, expected)
    for p in problems:
        print("safetensors_reader: mismatch: %s" % p)
    if not problems:
        print("safetensors_reader: %s: %d tensors match" % (argv[1], len(tensors)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
