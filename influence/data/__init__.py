"""Data: :class:`Dataset` (arrays, CSR, :class:`Sequences`, several inputs), ``.npz`` files
(memory-mapped), the bundled digits, and CNTK Text Format files (the reader and lazy datasets).
The lowest layer but the shared helpers: imports nothing else of the package."""
from .dataset import (Dataset, Sequences, as_dataset, batch_bounds, check_batch_size, check_class_labels,
                      check_binary_labels, first_bad, is_sparse)
from .npz import load_npz, save_npz, load_digits, is_ctf_path
from .ctf_reader import CTFError, InputSpec, CTFReader, read_ctf
from .ctf_dataset import CTFDataset, load_ctf, load_data

__all__ = ["Dataset", "Sequences", "as_dataset", "load_npz", "save_npz", "load_digits", "batch_bounds",
           "check_batch_size", "check_class_labels", "check_binary_labels", "first_bad", "is_sparse", "is_ctf_path",
           "CTFError", "InputSpec", "CTFReader", "read_ctf", "CTFDataset", "load_ctf", "load_data"]
