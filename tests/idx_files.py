"""Writes gzipped IDX files, the format Fashion-MNIST is distributed in."""
import gzip
import struct

import numpy as np


def write_idx(path, array: np.ndarray) -> None:
  array = np.asarray(array, np.uint8)
  header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
  header += b"".join(struct.pack(">I", d) for d in array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.tobytes())
