"""Dirty page rate: ``calc-dirty-rate`` / ``query-dirty-rate`` and the vCPU dirty-page limit
(``set-``/``cancel-``/``query-vcpu-dirty-limit``), as QEMU 9.1's migration/dirtyrate.c and
system/dirtylimit.c present them.

Modes of the measurement:

* ``page-sampling`` (any accelerator): 512 pages per GiB (``sample-pages``) of each RAM block of at
  least 128 KiB are picked at random and copied; after ``calc-time`` the changed ones give the rate
  (``changed * block MiB * 1000 / (samples * ms)``). No sample at all leaves the rate at -1, as QEMU.
* ``dirty-ring`` (KVM with ``dirty-ring-size``): the pages the vCPU's dirty ring reported during the
  period, per vCPU (``vcpu-dirty-rate``) and summed.
* ``dirty-bitmap`` (KVM without a ring): the pages set in KVM's dirty logs synced during the
  period. Under TCG QEMU accepts it and answers 0 (nothing counts its pages); here it is refused,
  as 0 would be a made-up value.

The limit slows the KVM vCPU (``emu.kvm_vcpu.KvmVCPU.set_dirty_limit``); it needs the dirty ring,
with QEMU's error otherwise. Rates are MiB/s, truncated as QEMU's integer arithmetic does.
"""
from __future__ import annotations

import random
import threading
import time
from typing import Any

from emu.errors import QapiError

DEFAULT_SAMPLE_PAGES = 512
MIN_SAMPLE_PAGES, MAX_SAMPLE_PAGES = 128, 16384
MIN_CALC_TIME_MS, MAX_CALC_TIME_MS = 50, 60000
MIN_RAMBLOCK_BYTES = 128 << 10  # QEMU's MIN_RAMBLOCK_SIZE << 10
PAGE = 4096
LIMIT_NEEDS_RING = "dirty page limit feature requires KVM with accelerator property 'dirty-ring-size' set'"


#: The QAPI schema of these commands (9.1 qapi/migration.json, in its order): plain data.
SCHEMA: list[dict[str, Any]] = [
    {'struct': 'DirtyRateVcpu', 'data': {'id': 'int', 'dirty-rate': 'int64'}},
    {'enum': 'DirtyRateStatus', 'data': ['unstarted', 'measuring', 'measured']},
    {'enum': 'DirtyRateMeasureMode', 'data': ['page-sampling', 'dirty-ring', 'dirty-bitmap']},
    {'enum': 'TimeUnit', 'data': ['second', 'millisecond']},
    {'struct': 'DirtyRateInfo',
     'data': {'*dirty-rate': 'int64', 'status': 'DirtyRateStatus', 'start-time': 'int64', 'calc-time': 'int64',
              'calc-time-unit': 'TimeUnit', 'sample-pages': 'uint64', 'mode': 'DirtyRateMeasureMode',
              '*vcpu-dirty-rate': ['DirtyRateVcpu']}},
    {'command': 'calc-dirty-rate', 'data': {'calc-time': 'int64', '*calc-time-unit': 'TimeUnit',
                                            '*sample-pages': 'int', '*mode': 'DirtyRateMeasureMode'}},
    {'command': 'query-dirty-rate', 'data': {'*calc-time-unit': 'TimeUnit'}, 'returns': 'DirtyRateInfo'},
    {'struct': 'DirtyLimitInfo', 'data': {'cpu-index': 'int', 'limit-rate': 'uint64', 'current-rate': 'uint64'}},
    {'command': 'set-vcpu-dirty-limit', 'data': {'*cpu-index': 'int', 'dirty-rate': 'uint64'}},
    {'command': 'cancel-vcpu-dirty-limit', 'data': {'*cpu-index': 'int'}},
    {'command': 'query-vcpu-dirty-limit', 'returns': ['DirtyLimitInfo']},
]


def _pages_to_mib(pages: int) -> int:
    return pages * PAGE >> 20


class DirtyRate:
    """The measurement state of one VM (QEMU's DirtyStat and CalculatingState)."""

    def __init__(self, vm: Any) -> None:
        self.vm = vm
        self.status = "unstarted"
        self.mode = "page-sampling"
        self.start_time = 0
        self.calc_time_ms = 0
        self.sample_pages = 0
        self.dirty_rate = -1
        self.vcpu_rates: list[dict[str, int]] = []
        self._lock = threading.Lock()

    def _ring_vcpu(self) -> Any:
        """The KVM vCPU with a dirty ring, or None."""
        vcpu = self.vm.vcpu
        if vcpu is None or not getattr(vcpu, "dirty_ring_size", 0):
            return None
        return vcpu

    # ---- calc-dirty-rate
    def calc(self, args: dict[str, Any]) -> None:
        """Starts a measurement in a thread; QEMU's checks, in QEMU's order."""
        with self._lock:
            if self.status == "measuring":
                raise QapiError("the dirty rate is already being measured.")
            calc_time = int(args["calc-time"])
            ms = calc_time if args.get("calc-time-unit") == "millisecond" else calc_time * 1000
            if not MIN_CALC_TIME_MS <= ms <= MAX_CALC_TIME_MS:
                raise QapiError(f"Calculation time is out of range [{MIN_CALC_TIME_MS}ms, {MAX_CALC_TIME_MS}ms].")
            mode = args.get("mode", "page-sampling")
            sample_pages = DEFAULT_SAMPLE_PAGES
            if "sample-pages" in args:
                if mode != "page-sampling":
                    raise QapiError("sample-pages is used only in page-sampling mode")
                sample_pages = int(args["sample-pages"])
                if not MIN_SAMPLE_PAGES <= sample_pages <= MAX_SAMPLE_PAGES:
                    raise QapiError(f"sample-pages is out of range[{MIN_SAMPLE_PAGES}, {MAX_SAMPLE_PAGES}].")
            ring = self._ring_vcpu() is not None
            if (mode == "dirty-ring" and not ring) or (mode == "dirty-bitmap" and ring):
                raise QapiError(f"mode {mode} is not enabled, use other method instead.")
            if mode == "dirty-bitmap" and getattr(self.vm.vcpu, "accel", "") != "kvm":
                raise QapiError("mode dirty-bitmap needs the KVM accelerator here (TCG's dirty pages are not "
                                "counted), use page-sampling instead.")
            self.mode, self.sample_pages, self.calc_time_ms = mode, sample_pages, ms
            self.dirty_rate, self.vcpu_rates = -1, []
            self.start_time = int(time.time())
            self.status = "measuring"
        threading.Thread(target=self._measure, args=(mode, ms, sample_pages), name="get_dirtyrate",
                         daemon=True).start()

    def _measure(self, mode: str, ms: int, sample_pages: int) -> None:
        try:
            if mode == "dirty-ring":
                self._measure_ring(ms)
            elif mode == "dirty-bitmap":
                self._measure_bitmap(ms)
            else:
                self._measure_sampling(ms, sample_pages)
        finally:
            with self._lock:
                self.status = "measured"

    def _wait(self, ms: int, start_ns: int) -> int:
        """Sleeps out the period; returns the real elapsed milliseconds (at least 1)."""
        left = start_ns + ms * 1_000_000 - time.monotonic_ns()
        if left > 0:
            time.sleep(left / 1e9)
        return max(1, (time.monotonic_ns() - start_ns) // 1_000_000)

    def _measure_ring(self, ms: int) -> None:
        vcpu = self._ring_vcpu()
        vcpu.harvest()
        start, pages = time.monotonic_ns(), vcpu.dirty_pages
        elapsed = self._wait(ms, start)
        vcpu.harvest()
        rate = _pages_to_mib((vcpu.dirty_pages - pages) * 1000) // elapsed
        self.calc_time_ms, self.vcpu_rates, self.dirty_rate = elapsed, [{"id": 0, "dirty-rate": rate}], rate

    def _measure_bitmap(self, ms: int) -> None:
        """QEMU's calculate_dirtyrate_dirty_bitmap: the logs are synced (into the RAM blocks'
        bitmaps, where a migration finds them too) at both ends of the period."""
        vcpu = self.vm.vcpu
        for block in self.vm.machine.ram_blocks:
            block.sync_dirty()
        start, pages = time.monotonic_ns(), vcpu.dirty_pages
        elapsed = self._wait(ms, start)
        for block in self.vm.machine.ram_blocks:
            block.sync_dirty()
        self.calc_time_ms = elapsed
        self.dirty_rate = _pages_to_mib((vcpu.dirty_pages - pages) * 1000) // elapsed

    def _measure_sampling(self, ms: int, sample_pages: int) -> None:
        samples = []  # (block, page numbers, their bytes at the start)
        rng = random.Random()
        for block in self.vm.machine.ram_blocks:
            size = block.used_length
            if size < MIN_RAMBLOCK_BYTES:
                continue
            count, npages = (size * sample_pages) >> 30, size // PAGE
            picks = [rng.randrange(0, npages - 1) for _ in range(count)] if count and npages > 1 else []
            view = block.view()
            samples.append((block, picks, [bytes(view[p * PAGE:(p + 1) * PAGE]) for p in picks]))
        start = time.monotonic_ns()
        elapsed = self._wait(ms, start)
        dirty = total = mib = 0
        for block, picks, before in samples:
            view = block.view()
            dirty += sum(1 for p, old in zip(picks, before) if view[p * PAGE:(p + 1) * PAGE] != old)
            total += len(picks)
            mib += _pages_to_mib(block.used_length // PAGE)
        self.calc_time_ms = elapsed
        if total:
            self.dirty_rate = dirty * mib * 1000 // (total * elapsed)

    # ---- query-dirty-rate
    def query(self, unit: str = "second") -> dict[str, Any]:
        with self._lock:
            info: dict[str, Any] = {}
            sample_pages = self.sample_pages
            if self.status == "measured":
                info["dirty-rate"] = self.dirty_rate
                if self.mode != "page-sampling":
                    sample_pages = 0
            calc_time = self.calc_time_ms if unit == "millisecond" else self.calc_time_ms // 1000
            info.update({"status": self.status, "start-time": self.start_time, "calc-time": calc_time,
                         "calc-time-unit": unit, "sample-pages": sample_pages, "mode": self.mode})
            if self.status == "measured" and self.mode == "dirty-ring":
                info["vcpu-dirty-rate"] = list(self.vcpu_rates)
            return info

    # ---- the vCPU dirty-page limit
    def _check_index(self, args: dict[str, Any]) -> None:
        if "cpu-index" in args and args["cpu-index"] != 0:  # one vCPU (-smp 1)
            raise QapiError("incorrect cpu index specified")

    def set_limit(self, args: dict[str, Any]) -> None:
        vcpu = self._ring_vcpu()
        if vcpu is None:
            raise QapiError(LIMIT_NEEDS_RING)
        self._check_index(args)
        vcpu.set_dirty_limit(int(args["dirty-rate"]) & ((1 << 64) - 1))

    def cancel_limit(self, args: dict[str, Any]) -> None:
        vcpu = self._ring_vcpu()
        if vcpu is None:
            return  # QEMU: silently nothing without KVM's dirty ring
        self._check_index(args)
        vcpu.set_dirty_limit(0)

    def query_limit(self) -> list[dict[str, int]]:
        vcpu = self._ring_vcpu()
        if vcpu is None or not vcpu.dirty_limit:
            return []
        return [{"cpu-index": 0, "limit-rate": vcpu.dirty_limit, "current-rate": vcpu.current_rate}]
