"""A PyTorch state dict (`torch.save(model.state_dict(), path)`, PyTorch's zip format) read
into numpy arrays, and written from them, without PyTorch.

The zip holds `<name>/data.pkl`, a pickle of the dict whose tensors refer to storages, and
`<name>/data/<key>`, each storage's raw little-endian bytes. The pickle is read by an
unpickler that builds nothing but ordered dicts and tensors (as the `.bin` reader builds
only arrays): a pickle that names any other callable is refused, so a malicious file runs
nothing. `write` emits the same format opcode by opcode (a pickler would have to import
torch to name its functions), as torch.save writes it: what `torch.load(weights_only=True)`
and `load_state_dict` take.
"""

import collections
import io
import os
import pickle
import struct
import zipfile

import numpy as np

from kerasbn.utils import errors

# PyTorch's storage classes as a pickle names them, and their dtypes.
STORAGES = {"FloatStorage": np.float32, "HalfStorage": np.float16, "DoubleStorage": np.float64,
            "BFloat16Storage": None, "LongStorage": np.int64, "IntStorage": np.int32,
            "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
            "BoolStorage": np.bool_}
# The archive's folder name inside the zip, and its format version, as torch.save writes them.
ARCHIVE, VERSION = "archive", "3"


class StateDictError(errors.UserError):
    """A file that is not a PyTorch state dict kerasbn reads, said in one line."""


def _rebuild_tensor(storage, offset, size, stride, *unused):
    """torch._utils._rebuild_tensor_v2's arguments as the numpy array they describe."""
    array, itemsize = storage
    if not size:
        return np.array(array[offset])
    return np.lib.stride_tricks.as_strided(
        array[offset:], shape=tuple(size), strides=[s * itemsize for s in stride]).copy()


class _Unpickler(pickle.Unpickler):
    """Builds ordered dicts and tensors (numpy arrays) only; storages come from the zip."""

    def __init__(self, file, read_storage):
        super().__init__(file)
        self.read_storage = read_storage

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) in (("torch._utils", "_rebuild_tensor_v2"),
                              ("torch._utils", "_rebuild_tensor")):
            return _rebuild_tensor
        if module == "torch" and name in STORAGES:
            return name
        raise pickle.UnpicklingError(f"it names {module}.{name}, which a state dict does not")

    def persistent_load(self, saved_id):
        kind, storage, key, _, numel = saved_id
        if kind != "storage" or storage not in STORAGES or STORAGES[storage] is None:
            raise pickle.UnpicklingError(f"a storage of type {storage!r}")
        dtype = np.dtype(STORAGES[storage]).newbyteorder("<")
        return np.frombuffer(self.read_storage(key), dtype, numel), dtype.itemsize


def read(path):
    """{parameter name: numpy array} of the state dict saved at `path` (a whole checkpoint
    whose state dict sits under "state_dict" or "model" is read too); StateDictError naming
    the file otherwise."""
    if not os.path.isfile(path):
        raise StateDictError(f"--pth={path} not found")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            [pickled] = [n for n in names if n.endswith("/data.pkl")] or [None]
            if pickled is None:
                raise pickle.UnpicklingError("no data.pkl in the zip")
            root = pickled[:-len("data.pkl")]
            with archive.open(pickled) as f:
                loaded = _Unpickler(io.BytesIO(f.read()),
                                    lambda key: archive.read(f"{root}data/{key}")).load()
    except zipfile.BadZipFile:
        raise StateDictError(f"--pth={path} is not in PyTorch's zip format (torch.save since "
                             "PyTorch 1.6); save it again with torch.save") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError) as e:
        raise StateDictError(f"--pth={path} is not a state dict kerasbn reads ({e}); save "
                             "model.state_dict() with torch.save") from None
    for key in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict) or not all(isinstance(v, np.ndarray)
                                               for v in loaded.values()):
        raise StateDictError(f"--pth={path} holds no state dict of tensors")
    # A model wrapped in DataParallel or DistributedDataParallel saves its keys under "module.".
    return collections.OrderedDict((k.removeprefix("module."), v) for k, v in loaded.items())


def _global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _int(value):
    return b"J" + struct.pack("<i", value)


def _text(value):
    data = value.encode("utf-8")
    return b"X" + struct.pack("<I", len(data)) + data


def _tuple(items):
    return b"(" + b"".join(items) + b"t"


_EMPTY_ORDERED_DICT = _global("collections", "OrderedDict") + b")R"


def _tensor(index, array):
    """The pickle of torch._utils._rebuild_tensor_v2 over storage `index` holding `array`."""
    storage = next(name for name, dtype in STORAGES.items()
                   if dtype is not None and np.dtype(dtype) == array.dtype)
    location = _tuple([_text("storage"), _global("torch", storage), _text(str(index)),
                       _text("cpu"), _int(array.size)]) + b"Q"
    strides = [int(np.prod(array.shape[i + 1:])) for i in range(array.ndim)]
    return (_global("torch._utils", "_rebuild_tensor_v2")
            + _tuple([location, _int(0), _tuple(map(_int, array.shape)),
                      _tuple(map(_int, strides)), b"\x89", _EMPTY_ORDERED_DICT]) + b"R")


def write(path, state):
    """Writes `state` ({key: numpy array}, in order) to `path` (or a binary file) as
    torch.save writes a state dict."""
    arrays = [np.array(v, v.dtype.newbyteorder("<"), order="C") for v in state.values()]
    pickled = (b"\x80\x02" + _EMPTY_ORDERED_DICT + b"("
               + b"".join(_text(k) + _tensor(i, a) for i, (k, a) in enumerate(zip(state, arrays)))
               + b"u.")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{ARCHIVE}/data.pkl", pickled)
        archive.writestr(f"{ARCHIVE}/byteorder", "little")
        for index, array in enumerate(arrays):
            archive.writestr(f"{ARCHIVE}/data/{index}", array.tobytes())
        archive.writestr(f"{ARCHIVE}/version", VERSION + "\n")
