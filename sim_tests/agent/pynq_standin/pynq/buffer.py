"""Stand-in for pynq/buffer.py (Xilinx/PYNQ): `PynqBuffer`, the numpy.ndarray subclass `pynq.allocate` returns.

Mirrors the real class's type and attributes (device_address / physical_address, virtual_address, coherent,
cacheable, bo, device, offset, flush(), invalidate(), freebuffer(), close(), a context manager), over ordinary
process memory: there is no physically contiguous memory here. The "device" counts cache flushes and
invalidations, so a test can see that the DMA driver keeps the buffer coherent as on a board.
"""
import itertools

import numpy as np


class PynqBuffer(np.ndarray):
    """An ndarray allocated (here: pretended) in DMA-able memory; create it with `pynq.allocate`."""

    def __new__(cls, *args, device=None, device_address=0, bo=0, coherent=False, **kwargs):
        self = super().__new__(cls, *args, **kwargs)
        self.device_address = device_address
        self.coherent = coherent
        self.bo = bo
        self.device = device
        self.offset = 0
        return self

    def __array_finalize__(self, obj):
        # views and slices of a buffer keep pointing into it (as in pynq: device address plus the offset)
        if isinstance(obj, PynqBuffer) and getattr(obj, "coherent", None) is not None:
            self.coherent = obj.coherent
            offset = self.virtual_address - obj.virtual_address
            self.device_address = obj.device_address + offset
            self.offset = obj.offset + offset
            self.device = obj.device
            self.bo = obj.bo
        else:
            self.device_address = None
            self.coherent = None

    # numpy >= 2 gives ndarray a read-only `device` (the array API's); pynq's boards run numpy 1, where the
    # attribute is an ordinary one. A property keeps pynq's meaning here: the allocating device.
    @property
    def device(self):
        return self._device

    @device.setter
    def device(self, value):
        self._device = value

    def freebuffer(self):
        """Free the underlying memory (here: forget the device handle)."""
        if getattr(self, "bo", 0) and self.device is not None:
            self.device.freed += 1
            self.bo = 0

    @property
    def cacheable(self):
        return not self.coherent

    @property
    def physical_address(self):
        return self.device_address

    @property
    def virtual_address(self):
        # pynq reads __array_interface__ each time; the stand-in remembers it (its memory never moves) so that
        # the benchmark's overlay row measures the agent, not a dict the stand-in builds per cache flush
        try:
            return self._va
        except AttributeError:
            self._va = self.__array_interface__["data"][0]
            return self._va

    def close(self):
        """Unused, as in pynq (backwards compatibility)."""

    def flush(self):
        """Write the CPU caches back before a device reads the buffer (counted by the device)."""
        if not self.coherent:
            self._device.flush(self.bo, self.offset, self.virtual_address, self.nbytes)

    def invalidate(self):
        """Drop the CPU caches' copy after a device wrote the buffer (counted by the device)."""
        if not self.coherent:
            self._device.invalidate(self.bo, self.offset, self.virtual_address, self.nbytes)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        self.freebuffer()
        return 0


class Device:
    """The allocating device: hands out fake physical addresses and counts cache maintenance."""

    def __init__(self):
        self.next_address = itertools.count(0x16000000, 0x10000)
        self.handles = itertools.count(1)
        self.allocated = 0
        self.freed = 0
        self.flushes = 0
        self.invalidates = 0

    def allocate(self, shape, dtype, **kwargs):
        self.allocated += 1
        return PynqBuffer(shape, dtype, device=self, device_address=next(self.next_address), bo=next(self.handles),
                          coherent=False)

    def flush(self, bo, offset, vaddr, nbytes):
        self.flushes += 1

    def invalidate(self, bo, offset, vaddr, nbytes):
        self.invalidates += 1


ACTIVE_DEVICE = Device()


def allocate(shape, dtype, target=None, **kwargs):
    """A PynqBuffer of `shape` and `dtype` (zero-filled here; pynq's memory is not cleared either)."""
    buf = (target or ACTIVE_DEVICE).allocate(shape, dtype, **kwargs)
    buf[...] = 0
    return buf
