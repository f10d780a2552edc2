"""GPU memory shared between two processes through a file descriptor (CUDA's virtual memory API).

The trusted evaluator and the model server (the child's code, sandboxed) live in different PID
namespaces, where CUDA's legacy IPC handles do not work (they name the exporting process by PID).
A VMM allocation exported as a POSIX file descriptor does: the evaluator allocates the buffers,
the server inherits their descriptors through bwrap, maps them, and writes logits in place, so
logits of a 21 M-token evaluation never leave the GPU (over a pipe they would be 687 GB).

Only ctypes over the driver library (`libcuda.so.1`), no extra package. The caller must have
made a CUDA context current first (any torch CUDA op does).
"""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

_HANDLE_POSIX_FD = 1            # CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR
_ALLOCATION_PINNED = 1          # CU_MEM_ALLOCATION_TYPE_PINNED
_LOCATION_DEVICE = 1            # CU_MEM_LOCATION_TYPE_DEVICE
_ACCESS_READWRITE = 3           # CU_MEM_ACCESS_FLAGS_PROT_READWRITE
_GRANULARITY_MINIMUM = 0


class CudaShareError(RuntimeError):
    """A driver call failed; the message names it and CUDA's error."""


class _Location(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("id", ctypes.c_int)]


class _AllocFlags(ctypes.Structure):
    _fields_ = [("compressionType", ctypes.c_ubyte), ("gpuDirectRDMACapable", ctypes.c_ubyte),
                ("usage", ctypes.c_ushort), ("reserved", ctypes.c_ubyte * 4)]


class _AllocationProp(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("requestedHandleTypes", ctypes.c_int), ("location", _Location),
                ("win32HandleMetaData", ctypes.c_void_p), ("allocFlags", _AllocFlags)]


class _AccessDesc(ctypes.Structure):
    _fields_ = [("location", _Location), ("flags", ctypes.c_int)]


_driver = None


def _lib():
    global _driver
    if _driver is None:
        try:
            _driver = ctypes.CDLL("libcuda.so.1")
        except OSError as exc:
            raise CudaShareError(f"the CUDA driver library cannot be loaded ({exc})") from None
    return _driver


def _check(result: int, call: str) -> None:
    if result != 0:
        name = ctypes.c_char_p()
        _lib().cuGetErrorName(result, ctypes.byref(name))
        raise CudaShareError(f"{call} failed: {(name.value or b'?').decode()} ({result})")


def _prop(device: int) -> _AllocationProp:
    prop = _AllocationProp()
    prop.type = _ALLOCATION_PINNED
    prop.requestedHandleTypes = _HANDLE_POSIX_FD
    prop.location = _Location(_LOCATION_DEVICE, device)
    return prop


def padded_size(nbytes: int, device: int) -> int:
    """`nbytes` rounded up to the allocation granularity of `device`."""
    granularity = ctypes.c_size_t()
    _check(_lib().cuMemGetAllocationGranularity(ctypes.byref(granularity), ctypes.byref(_prop(device)),
                                                _GRANULARITY_MINIMUM), "cuMemGetAllocationGranularity")
    g = granularity.value
    return (nbytes + g - 1) // g * g


@dataclass
class SharedBuffer:
    """`size` bytes of GPU memory mapped at `ptr` in this process; `fd` exports it (the owner only)."""
    ptr: int
    size: int
    device: int
    handle: int
    fd: int = -1

    def tensor(self, dtype, shape, offset: int = 0):
        """A torch tensor over the buffer from byte `offset` (no copy)."""
        import numpy as np
        import torch

        count = int(np.prod(shape))
        itemsize = torch.empty(0, dtype=dtype).element_size()
        if offset < 0 or offset + count * itemsize > self.size:
            raise CudaShareError(f"a tensor of {count * itemsize} bytes at {offset} does not fit a buffer of {self.size}")
        typestr = {torch.float32: "<f4", torch.int64: "<i8", torch.bfloat16: "<f2"}[dtype]

        class _View:        # __cuda_array_interface__: torch wraps the pointer without a copy
            __cuda_array_interface__ = {"shape": tuple(shape), "typestr": typestr, "data": (self.ptr + offset, False),
                                        "version": 3, "strides": None}
        view = torch.as_tensor(_View(), device=f"cuda:{self.device}")
        return view.view(dtype) if dtype is torch.bfloat16 else view

    def close(self) -> None:
        lib = _lib()
        lib.cuMemUnmap(ctypes.c_uint64(self.ptr), ctypes.c_size_t(self.size))
        lib.cuMemAddressFree(ctypes.c_uint64(self.ptr), ctypes.c_size_t(self.size))
        lib.cuMemRelease(ctypes.c_uint64(self.handle))
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _map(handle: int, size: int, device: int) -> int:
    lib = _lib()
    ptr = ctypes.c_uint64()
    _check(lib.cuMemAddressReserve(ctypes.byref(ptr), ctypes.c_size_t(size), ctypes.c_size_t(0),
                                   ctypes.c_uint64(0), ctypes.c_ulonglong(0)), "cuMemAddressReserve")
    _check(lib.cuMemMap(ptr, ctypes.c_size_t(size), ctypes.c_size_t(0), ctypes.c_uint64(handle),
                        ctypes.c_ulonglong(0)), "cuMemMap")
    access = _AccessDesc(_Location(_LOCATION_DEVICE, device), _ACCESS_READWRITE)
    _check(lib.cuMemSetAccess(ptr, ctypes.c_size_t(size), ctypes.byref(access), ctypes.c_size_t(1)),
           "cuMemSetAccess")
    return ptr.value


def allocate(nbytes: int, device: int = 0) -> SharedBuffer:
    """A new buffer of at least `nbytes` on `device`, exportable: its `fd` is inheritable."""
    lib = _lib()
    size = padded_size(nbytes, device)
    handle = ctypes.c_uint64()
    _check(lib.cuMemCreate(ctypes.byref(handle), ctypes.c_size_t(size), ctypes.byref(_prop(device)),
                           ctypes.c_ulonglong(0)), "cuMemCreate")
    fd = ctypes.c_int(-1)
    _check(lib.cuMemExportToShareableHandle(ctypes.byref(fd), ctypes.c_uint64(handle.value), _HANDLE_POSIX_FD,
                                            ctypes.c_ulonglong(0)), "cuMemExportToShareableHandle")
    os.set_inheritable(fd.value, True)
    return SharedBuffer(_map(handle.value, size, device), size, device, handle.value, fd.value)


def open_shared(fd: int, size: int, device: int = 0) -> SharedBuffer:
    """Map the buffer that another process exported as `fd` (inherited) into this process."""
    lib = _lib()
    handle = ctypes.c_uint64()
    _check(lib.cuMemImportFromShareableHandle(ctypes.byref(handle), ctypes.c_void_p(fd), _HANDLE_POSIX_FD),
           "cuMemImportFromShareableHandle")
    return SharedBuffer(_map(handle.value, size, device), size, device, handle.value)
