/*
 * kvm: the low-level core of a KVM accelerator (QEMU's accel/kvm/kvm-all.c and target/i386/kvm,
 * reduced to what a single-threaded x86 PC without in-kernel irqchip needs).
 *
 * /dev/kvm gives a system fd (kvm_open), which creates VM fds (kvm_create_vm); guest RAM is
 * mapped into a VM by host virtual address (kvm_set_memory: the pages of a memcore block, so that
 * qtest and migration see the very bytes the guest does). A vCPU (kvm_vcpu) owns its fd and the
 * mmapped kvm_run page; kvm_vcpu_run does one KVM_RUN and reports the exit in a kvm_core_exit,
 * port and MMIO reads are answered with kvm_vcpu_complete_in / kvm_vcpu_complete_mmio_read before
 * the next run. Interrupts are injected from user space (KVM_INTERRUPT) when the vCPU is ready,
 * with the interrupt-window exit to wait for that moment.
 *
 * Every function returns a negated errno on failure (-EINVAL for a bad argument) and never
 * aborts; kvm_vcpu_new returns NULL with errno set. The Python binding releases the GIL around
 * every call. Registers are copied through plain structs of this header, not the kernel's.
 */
#ifndef KVM_CORE_H
#define KVM_CORE_H

#include <stdint.h>

/* KVM_MEM_LOG_DIRTY_PAGES: the slot keeps a dirty bitmap (kvm_get_dirty_log). */
#define KVM_CORE_LOG_DIRTY 1
/* KVM_MEM_READONLY: guest writes to the slot exit as MMIO writes (ROM). */
#define KVM_CORE_READONLY 2
/* Most MSRs one kvm_vcpu_get_msrs / kvm_vcpu_set_msrs call moves. */
#define KVM_CORE_MAX_MSRS 64
/* Slots kvm_set_memory accepts: 0 .. KVM_CORE_MAX_SLOTS - 1. */
#define KVM_CORE_MAX_SLOTS 256
/* vCPU indexes kvm_vcpu_new accepts (further limited by the kernel's KVM_CAP_MAX_VCPU_ID). */
#define KVM_CORE_MAX_VCPUS 1024
/* Most bytes of string port I/O copied into kvm_core_exit.data (io_total has the true size). */
#define KVM_CORE_IO_DATA_MAX 4096

/* The kernel's exit reasons this core reports (kvm.c checks them against <linux/kvm.h>). */
#define KVM_CORE_EXIT_UNKNOWN 0
#define KVM_CORE_EXIT_IO 2
#define KVM_CORE_EXIT_HLT 5
#define KVM_CORE_EXIT_MMIO 6
#define KVM_CORE_EXIT_IRQ_WINDOW_OPEN 7
#define KVM_CORE_EXIT_SHUTDOWN 8
#define KVM_CORE_EXIT_FAIL_ENTRY 9
#define KVM_CORE_EXIT_INTR 10
#define KVM_CORE_EXIT_INTERNAL_ERROR 17
#define KVM_CORE_EXIT_DIRTY_RING_FULL 31
/* Directions of port I/O (KVM_EXIT_IO_IN / _OUT). */
#define KVM_CORE_IO_IN 0
#define KVM_CORE_IO_OUT 1

/* A vCPU: its fd and its mapped kvm_run page (opaque). */
typedef struct kvm_core_vcpu kvm_vcpu;

/* General-purpose registers, rip and rflags. */
typedef struct kvm_core_regs {
    uint64_t rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp;
    uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
    uint64_t rip, rflags;
} kvm_core_regs;

/* A segment register with its hidden descriptor cache. */
typedef struct kvm_core_segment {
    uint64_t base;
    uint32_t limit;
    uint16_t selector;
    uint8_t type, present, dpl, db, s, l, g, avl, unusable;
} kvm_core_segment;

/* A descriptor table register (GDTR, IDTR). */
typedef struct kvm_core_dtable {
    uint64_t base;
    uint16_t limit;
} kvm_core_dtable;

/* Segment and system registers (the kernel's kvm_sregs without the interrupt bitmap). */
typedef struct kvm_core_sregs {
    kvm_core_segment cs, ds, es, fs, gs, ss, tr, ldt;
    kvm_core_dtable gdt, idt;
    uint64_t cr0, cr2, cr3, cr4, cr8, efer, apic_base;
} kvm_core_sregs;

/* The x87/SSE state (the kernel's kvm_fpu): fpr[i] is ST(i) in stack order, 16 bytes each with the
 * 80-bit value in the low 10; ftwx is FXSAVE's abridged tag word (bit i set: physical register i
 * valid). */
typedef struct kvm_core_fpu {
    uint8_t fpr[8][16];
    uint16_t fcw, fsw;
    uint8_t ftwx;
    uint16_t last_opcode;
    uint64_t last_ip, last_dp;
    uint8_t xmm[16][16];
    uint32_t mxcsr;
} kvm_core_fpu;

/* One KVM_RUN's outcome. Only the fields of `reason` are meaningful. */
typedef struct kvm_core_exit {
    uint32_t reason;            /* KVM_EXIT_* (KVM_CORE_EXIT_INTR when KVM_RUN was interrupted) */
    /* KVM_EXIT_IO */
    uint8_t io_direction;       /* KVM_CORE_IO_IN / KVM_CORE_IO_OUT */
    uint8_t io_size;            /* 1, 2 or 4 */
    uint16_t io_port;
    uint32_t io_count;          /* > 1 for string (rep ins/outs) I/O */
    uint32_t io_total;          /* io_size * io_count: the bytes the access moves */
    uint32_t data_len;          /* bytes valid in data: io_total (OUT, at most the cap) or mmio_len */
    /* KVM_EXIT_MMIO */
    uint64_t mmio_phys_addr;
    uint32_t mmio_len;          /* 1..8 */
    uint8_t mmio_is_write;
    /* KVM_EXIT_INTERNAL_ERROR: suberror; KVM_EXIT_FAIL_ENTRY: hardware_entry_failure_reason */
    uint64_t error;
    /* KVM_EXIT_INTERNAL_ERROR: the kernel's extra data (internal.data[0:ndata]) */
    uint32_t ndata;
    uint64_t idata[16];
    /* data[0:data_len]: OUT data (io) or written data (mmio); the rest is stale */
    uint8_t data[4096];
} kvm_core_exit;

/* Opens /dev/kvm (O_RDWR | O_CLOEXEC) and checks KVM_GET_API_VERSION == 12 (-EPROTO otherwise).
 * Returns the system fd. */
int kvm_open(void);
/* KVM_CHECK_EXTENSION on fd (system or VM fd): 0 when absent, else the capability's value. */
int kvm_check_extension(int kvm_fd, int cap);
/* KVM_CREATE_VM, then (as QEMU on x86) the TSS at 0xfffbd000 and the EPT identity map at
 * 0xfeffc000. Returns the VM fd. */
int kvm_create_vm(int kvm_fd);
/* Closes a VM fd and forgets its slots (see kvm_set_memory). */
int kvm_close_vm(int vm_fd);
/* KVM_SET_USER_MEMORY_REGION: slot maps [guest_phys, +size) to the host pages at host_addr.
 * Everything page-aligned, no wrap; size 0 deletes the slot; flags a subset of
 * KVM_CORE_LOG_DIRTY | KVM_CORE_READONLY. The slot's size is remembered for kvm_get_dirty_log's bounds check. */
int kvm_set_memory(int vm_fd, uint32_t slot, uint64_t guest_phys, uint64_t size, uint64_t host_addr,
                   uint32_t flags);
/* KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 (manual protect, pages not initially set): KVM_GET_DIRTY_LOG then
 * leaves the pages writable, and kvm_clear_dirty_log re-arms the ones the caller took. Before any
 * slot is mapped. -EINVAL where the kernel lacks it. */
int kvm_enable_manual_protect(int vm_fd);
/* KVM_CLEAR_DIRTY_LOG: re-arms the pages of the slot set in bitmap (bit n: page n); the slot must be
 * mapped with KVM_CORE_LOG_DIRTY and words must hold all its pages. */
int kvm_clear_dirty_log(int vm_fd, uint32_t slot, const uint64_t *bitmap, uint64_t words);
/* KVM_GET_DIRTY_LOG of a slot mapped by kvm_set_memory with KVM_CORE_LOG_DIRTY into bitmap (bit
 * n: page n of the slot written since the previous call, which the call clears); words must hold
 * every page of the slot (-ENOSPC otherwise). */
int kvm_get_dirty_log(int vm_fd, uint32_t slot, uint64_t *bitmap, uint64_t words);

/* KVM_CAP_DIRTY_LOG_RING with `entries` (a power of two) per vCPU: must come before the first
 * vCPU; KVM_GET_DIRTY_LOG is then refused and dirty pages are read from the rings
 * (kvm_reaper_start). */
int kvm_enable_dirty_ring(int vm_fd, uint32_t entries);
/* KVM_RESET_DIRTY_RINGS: write-protects again the pages harvested since the last reset (returns
 * how many). */
int kvm_reset_dirty_rings(int vm_fd);

/* Creates vCPU `index` of the VM, maps its kvm_run page (and its dirty ring of ring_entries
 * entries, as given to kvm_enable_dirty_ring; 0 without a ring) and gives it the host's supported
 * CPUID. NULL with errno set on failure (EINVAL for an index out of range). */
kvm_vcpu *kvm_vcpu_new(int kvm_fd, int vm_fd, int index, uint32_t ring_entries);
/* Unmaps and closes a vCPU; NULL does nothing. */
void kvm_vcpu_free(kvm_vcpu *vcpu);
int kvm_vcpu_get_regs(kvm_vcpu *vcpu, kvm_core_regs *out);
int kvm_vcpu_set_regs(kvm_vcpu *vcpu, const kvm_core_regs *in);
int kvm_vcpu_get_sregs(kvm_vcpu *vcpu, kvm_core_sregs *out);
/* Sets the segment/system registers (the kernel's pending interrupt bitmap is kept). */
int kvm_vcpu_set_sregs(kvm_vcpu *vcpu, const kvm_core_sregs *in);
int kvm_vcpu_get_fpu(kvm_vcpu *vcpu, kvm_core_fpu *out);
int kvm_vcpu_set_fpu(kvm_vcpu *vcpu, const kvm_core_fpu *in);
/* KVM_GET_MSRS of the n (<= KVM_CORE_MAX_MSRS) MSRs index[0..n) into values: returns how many were
 * read (the kernel stops at the first one it does not have). */
int kvm_vcpu_get_msrs(kvm_vcpu *vcpu, const uint32_t *index, uint64_t *values, uint32_t n);
/* KVM_SET_MSRS: returns how many were set (fewer than n: index[result] was refused). */
int kvm_vcpu_set_msrs(kvm_vcpu *vcpu, const uint32_t *index, const uint64_t *values, uint32_t n);
/* Installs the no-op handler (no SA_RESTART) of the signal that kicks a vCPU thread out of
 * KVM_RUN (pthread_kill makes KVM_RUN return EINTR). Returns the signal number. */
int kvm_kick_signal_init(void);
/* Real mode at cs:ip: CS selector cs, base cs * 16; the other segments 0; CR0.PE and EFER
 * cleared; general registers 0, rflags 0x2 (a direct boot at 0000:7c00). */
int kvm_vcpu_reset_real_mode(kvm_vcpu *vcpu, uint16_t cs, uint64_t ip);
/* One KVM_RUN; *out describes the exit. An interrupted run (EINTR, EAGAIN, immediate_exit) is
 * reason KVM_CORE_EXIT_INTR, not an error. */
int kvm_vcpu_run(kvm_vcpu *vcpu, kvm_core_exit *out);
/* Answers the pending port read (the last exit was an IN): len bytes, 1 <= len <= io_total, are
 * stored where the next KVM_RUN loads them. -EINVAL when no IN is pending or len is too long. */
int kvm_vcpu_complete_in(kvm_vcpu *vcpu, const uint8_t *data, uint32_t len);
/* The same for a pending MMIO read (1 <= len <= mmio_len). */
int kvm_vcpu_complete_mmio_read(kvm_vcpu *vcpu, const uint8_t *data, uint32_t len);
/* run->request_interrupt_window: with on, KVM_RUN exits (KVM_EXIT_IRQ_WINDOW_OPEN) as soon as
 * the guest can take an interrupt. */
void kvm_vcpu_request_interrupt_window(kvm_vcpu *vcpu, int on);
/* 1 when an interrupt can be injected now (ready_for_interrupt_injection and IF), else 0. */
int kvm_vcpu_ready_for_interrupt(kvm_vcpu *vcpu);
/* KVM_INTERRUPT: queues external interrupt `vector` (0..255) for the next entry. */
int kvm_vcpu_inject_irq(kvm_vcpu *vcpu, uint32_t vector);
/* A dirty-ring reaper: a thread (real-time priority where allowed) that harvests one vCPU's ring
 * every interval_us (a fifth of it while the ring is busy) into bitmaps of its own and re-arms the
 * pages (KVM_RESET_DIRTY_RINGS), so that the ring does not overflow whatever the caller's threads
 * are doing: some hosts' KVM (software-assisted, like PVM) let a running guest push entries past
 * the soft limit without a ring-full exit, and an overflowed ring leaves the vCPU stuck for good. pages[s] is slot s's page
 * count (0: not logged). NULL with errno set on failure. */
typedef struct kvm_core_reaper kvm_reaper;
kvm_reaper *kvm_reaper_start(kvm_vcpu *vcpu, int vm_fd, const uint64_t *pages, uint32_t nslots,
                             uint32_t interval_us);
/* Harvests once more, then moves the reaper's bitmaps into out[s] (ORed; NULL: dropped; each
 * holding pages[s] bits as given to kvm_reaper_start). Returns the pages moved, or -errno. */
int64_t kvm_reaper_collect(kvm_reaper *r, uint64_t *const *out);
/* Every page harvested since the start (the vCPU's dirty page count). */
uint64_t kvm_reaper_total(kvm_reaper *r);
/* Stops and joins the thread, frees the reaper; NULL does nothing. */
void kvm_reaper_stop(kvm_reaper *r);
/* run->immediate_exit, safe to call from another thread: with on, the next KVM_RUN returns at
 * once (reason KVM_CORE_EXIT_INTR) without entering the guest. To stop a run already inside the
 * guest, set it and then send the vCPU thread a signal (the signal makes KVM_RUN return EINTR;
 * the flag closes the race of a signal arriving just before KVM_RUN). Clear it before resuming. */
void kvm_vcpu_set_immediate_exit(kvm_vcpu *vcpu, int on);

#endif
