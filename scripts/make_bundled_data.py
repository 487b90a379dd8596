"""Writes skelmae_ext/data/bundled/bandai2_coco2d.pkl.xz from the project's converted
Bandai-Namco-Research-Motiondataset-2 (COCO-17 2D) pickle and its JSON (class names).

    python scripts/make_bundled_data.py /path/to/bandai2_coco2d.pkl /path/to/bandai2_coco2d.json

Lossless: every sequence, frame, split and annotation key as in the source, plus the top-level
``classes`` from the JSON. Only the storage changes: each array is stored in Fortran order (one
joint's coordinate over time is contiguous, so neighbouring values are close) and the pickle is
xz-compressed with a byte delta filter (distance 2, the float16 width) before LZMA2 (4 MiB
dictionary). Any xz reader (Python's lzma) reads it back; skelmae_ext.data.load_annotations
does so directly.
Not needed at run time.
"""

import argparse
import json
import lzma
import os
import pickle

import numpy as np

OUT = os.path.join(os.path.dirname(__file__), "..", "skelmae_ext", "data", "bundled", "bandai2_coco2d.pkl.xz")
# A 4 MiB dictionary: the reader then needs about 4 MiB to decompress (preset 9's 64 MiB would
# outweigh the data), for a file 0.7% larger.
FILTERS = [{"id": lzma.FILTER_DELTA, "dist": 2},
           {"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": 4 << 20}]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pickle")
    parser.add_argument("json")
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args()
    with open(args.pickle, "rb") as handle:
        data = pickle.load(handle)  # the project's own file
    with open(args.json) as handle:
        classes = json.load(handle)["class_names"]
    annotations = [{key: np.asfortranarray(value) if isinstance(value, np.ndarray) else value
                    for key, value in annotation.items()} for annotation in data["annotations"]]
    bundled = {"split": data["split"], "annotations": annotations, "classes": list(classes)}
    with lzma.open(args.out, "wb", format=lzma.FORMAT_XZ, filters=FILTERS) as handle:
        pickle.dump(bundled, handle, protocol=4)
    print(f"{args.out}: {os.path.getsize(args.out) / 1e6:.2f} MB, {len(annotations)} sequences, "
          f"{len(classes)} classes, splits {({k: len(v) for k, v in data['split'].items()})}")


if __name__ == "__main__":
    main()
