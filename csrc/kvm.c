/* kvm: /dev/kvm, VMs, memory slots, dirty logs and vCPUs for the KVM accelerator. See kvm.h. */
#define _GNU_SOURCE
#include "kvm.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

_Static_assert(KVM_CORE_LOG_DIRTY == KVM_MEM_LOG_DIRTY_PAGES, "the kernel's value");
_Static_assert(KVM_CORE_READONLY == KVM_MEM_READONLY, "the kernel's value");
_Static_assert(KVM_CORE_EXIT_UNKNOWN == KVM_EXIT_UNKNOWN, "the kernel's value");
_Static_assert(KVM_CORE_EXIT_IO == KVM_EXIT_IO, "the kernel's value");
_Static_assert(KVM_CORE_EXIT_HLT == KVM_EXIT_HLT, "the kernel's value");
_Static_assert(KVM_CORE_EXIT_MMIO == KVM_EXIT_MMIO, "the kernel's value");
_Static_assert(KVM_CORE_EXIT_IRQ_WINDOW_OPEN == KVM_EXIT_IRQ_WINDOW_OPEN, "the kernel's value");
_Static_assert(KVM_CORE_EXIT_SHUTDOWN == KVM_EXIT_SHUTDOWN, "the kernel's value");
_Static_assert(KVM_CORE_EXIT_FAIL_ENTRY == KVM_EXIT_FAIL_ENTRY, "the kernel's value");
_Static_assert(KVM_CORE_EXIT_INTR == KVM_EXIT_INTR, "the kernel's value");
_Static_assert(KVM_CORE_EXIT_INTERNAL_ERROR == KVM_EXIT_INTERNAL_ERROR, "the kernel's value");
_Static_assert(KVM_CORE_EXIT_DIRTY_RING_FULL == KVM_EXIT_DIRTY_RING_FULL, "the kernel's value");
_Static_assert(KVM_CORE_IO_IN == KVM_EXIT_IO_IN && KVM_CORE_IO_OUT == KVM_EXIT_IO_OUT, "the kernel's values");
_Static_assert(sizeof(((kvm_core_exit *)0)->data) == KVM_CORE_IO_DATA_MAX, "data holds the cap");

/* The page size of slots and dirty bitmaps. */
#define KVM_CORE_PAGE 4096ULL
/* Where QEMU's x86 target puts the TSS (3 pages) and the EPT identity map (1 page). */
#define KVM_CORE_TSS_ADDR 0xfffbd000UL
#define KVM_CORE_IDENTITY_MAP_ADDR 0xfeffc000ULL
/* Most CPUID entries asked of KVM_GET_SUPPORTED_CPUID (doubled from 64 on E2BIG). */
#define KVM_CORE_MAX_CPUID 4096
/* Remembered (vm fd, slot) sizes, for kvm_get_dirty_log's bounds check. */
#define KVM_CORE_MAX_SLOT_RECORDS 1024

struct kvm_core_vcpu {
    int fd;
    struct kvm_run *run;        /* the mmapped run page(s) */
    size_t run_size;            /* their length (KVM_GET_VCPU_MMAP_SIZE) */
    uint32_t pending_in;        /* bytes of the IN awaiting kvm_vcpu_complete_in (0: none) */
    uint32_t pending_mmio;      /* bytes of the MMIO read awaiting completion (0: none) */
    struct kvm_dirty_gfn *ring; /* the mmapped dirty ring (NULL: none) */
    uint32_t ring_entries;      /* its entries (a power of two) */
    uint32_t ring_fetch;        /* the next entry to look at */
};

/* A mapped slot: which VM, which slot, how many pages (0: free record). */
struct slot_record {
    int vm_fd;
    uint32_t slot;
    uint64_t pages;
};

static struct slot_record slot_records[KVM_CORE_MAX_SLOT_RECORDS];
static pthread_mutex_t slot_lock = PTHREAD_MUTEX_INITIALIZER;

/* ioctl restarted on EINTR (not for KVM_RUN, whose EINTR is an exit); -errno on failure. */
static int xioctl(int fd, unsigned long request, void *arg)
{
    int rc;
    do {
        rc = ioctl(fd, request, arg);
    } while (rc < 0 && errno == EINTR);
    return rc < 0 ? -errno : rc;
}

int kvm_open(void)
{
    int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        return -errno;
    }
    int version = ioctl(fd, KVM_GET_API_VERSION, 0);
    if (version != KVM_API_VERSION) {
        int err = version < 0 ? errno : EPROTO;
        close(fd);
        return -err;
    }
    return fd;
}

int kvm_check_extension(int kvm_fd, int cap)
{
    int rc = ioctl(kvm_fd, KVM_CHECK_EXTENSION, (unsigned long)cap);
    return rc < 0 ? -errno : rc;
}

/* Drops every slot record of vm_fd (a closed VM, or a new VM reusing the fd number). */
static void forget_slots(int vm_fd)
{
    pthread_mutex_lock(&slot_lock);
    for (int i = 0; i < KVM_CORE_MAX_SLOT_RECORDS; i++) {
        if (slot_records[i].pages && slot_records[i].vm_fd == vm_fd) {
            slot_records[i].pages = 0;
        }
    }
    pthread_mutex_unlock(&slot_lock);
}

/* Records (vm_fd, slot) as `pages` long (0: unmapped). -ENOSPC when the table is full. */
static int record_slot(int vm_fd, uint32_t slot, uint64_t pages)
{
    int rc = pages ? -ENOSPC : 0, free_index = -1;
    pthread_mutex_lock(&slot_lock);
    for (int i = 0; i < KVM_CORE_MAX_SLOT_RECORDS; i++) {
        struct slot_record *r = &slot_records[i];
        if (r->pages && r->vm_fd == vm_fd && r->slot == slot) {
            r->pages = 0;
        }
        if (!r->pages && free_index < 0) {
            free_index = i;
        }
    }
    if (pages && free_index >= 0) {
        slot_records[free_index] = (struct slot_record){ .vm_fd = vm_fd, .slot = slot, .pages = pages };
        rc = 0;
    }
    pthread_mutex_unlock(&slot_lock);
    return rc;
}

/* The recorded page count of (vm_fd, slot), 0 when not mapped through kvm_set_memory. */
static uint64_t slot_pages(int vm_fd, uint32_t slot)
{
    uint64_t pages = 0;
    pthread_mutex_lock(&slot_lock);
    for (int i = 0; i < KVM_CORE_MAX_SLOT_RECORDS; i++) {
        if (slot_records[i].pages && slot_records[i].vm_fd == vm_fd && slot_records[i].slot == slot) {
            pages = slot_records[i].pages;
        }
    }
    pthread_mutex_unlock(&slot_lock);
    return pages;
}

int kvm_create_vm(int kvm_fd)
{
    int vm = ioctl(kvm_fd, KVM_CREATE_VM, 0UL);
    if (vm < 0) {
        return -errno;
    }
    forget_slots(vm);
    int rc = ioctl(vm, KVM_SET_TSS_ADDR, KVM_CORE_TSS_ADDR) < 0 ? -errno : 0;
    if (rc == 0 && kvm_check_extension(kvm_fd, KVM_CAP_SET_IDENTITY_MAP_ADDR) > 0) {
        uint64_t addr = KVM_CORE_IDENTITY_MAP_ADDR;
        rc = xioctl(vm, KVM_SET_IDENTITY_MAP_ADDR, &addr);
    }
    if (rc < 0) {
        close(vm);
        return rc;
    }
    return vm;
}

int kvm_close_vm(int vm_fd)
{
    if (vm_fd < 0) {
        return -EBADF;
    }
    forget_slots(vm_fd);
    return close(vm_fd) < 0 ? -errno : 0;
}

int kvm_set_memory(int vm_fd, uint32_t slot, uint64_t guest_phys, uint64_t size, uint64_t host_addr,
                   uint32_t flags)
{
    if (slot >= KVM_CORE_MAX_SLOTS || (flags & ~(uint32_t)(KVM_CORE_LOG_DIRTY | KVM_CORE_READONLY))) {
        return -EINVAL;
    }
    if (guest_phys % KVM_CORE_PAGE || size % KVM_CORE_PAGE || host_addr % KVM_CORE_PAGE) {
        return -EINVAL;
    }
    if (guest_phys + size < guest_phys || host_addr + size < host_addr) {
        return -EINVAL;
    }
    struct kvm_userspace_memory_region region = {
        .slot = slot, .flags = flags, .guest_phys_addr = guest_phys,
        .memory_size = size, .userspace_addr = size ? host_addr : 0,
    };
    int rc = xioctl(vm_fd, KVM_SET_USER_MEMORY_REGION, &region);
    if (rc < 0) {
        return rc;
    }
    return record_slot(vm_fd, slot, (flags & KVM_CORE_LOG_DIRTY) ? size / KVM_CORE_PAGE : 0);
}

int kvm_get_dirty_log(int vm_fd, uint32_t slot, uint64_t *bitmap, uint64_t words)
{
    if (slot >= KVM_CORE_MAX_SLOTS || bitmap == NULL) {
        return -EINVAL;
    }
    uint64_t pages = slot_pages(vm_fd, slot);
    if (pages == 0) {
        return -ENOENT;  /* not mapped here, or mapped without KVM_CORE_LOG_DIRTY */
    }
    if (words < (pages + 63) / 64) {
        return -ENOSPC;
    }
    struct kvm_dirty_log log = { .slot = slot, .dirty_bitmap = bitmap };
    return xioctl(vm_fd, KVM_GET_DIRTY_LOG, &log);
}

int kvm_enable_manual_protect(int vm_fd)
{
    struct kvm_enable_cap cap = { .cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 };
    cap.args[0] = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE;
    return xioctl(vm_fd, KVM_ENABLE_CAP, &cap);
}

int kvm_clear_dirty_log(int vm_fd, uint32_t slot, const uint64_t *bitmap, uint64_t words)
{
    if (slot >= KVM_CORE_MAX_SLOTS || bitmap == NULL) {
        return -EINVAL;
    }
    uint64_t pages = slot_pages(vm_fd, slot);
    if (pages == 0) {
        return -ENOENT;
    }
    if (words < (pages + 63) / 64 || pages > UINT32_MAX) {
        return -ENOSPC;
    }
    /* the whole slot at once: first_page 0 and num_pages the slot's end, as the kernel requires */
    struct kvm_clear_dirty_log log = { .slot = slot, .num_pages = (uint32_t)pages, .first_page = 0,
                                       .dirty_bitmap = (void *)bitmap };
    return xioctl(vm_fd, KVM_CLEAR_DIRTY_LOG, &log);
}

/* The host's supported CPUID (KVM_GET_SUPPORTED_CPUID, growing the buffer on E2BIG) given to
 * the vCPU with KVM_SET_CPUID2. */
static int set_supported_cpuid(int kvm_fd, int vcpu_fd)
{
    for (uint32_t n = 64; n <= KVM_CORE_MAX_CPUID; n *= 2) {
        struct kvm_cpuid2 *cpuid = calloc(1, sizeof(*cpuid) + n * sizeof(struct kvm_cpuid_entry2));
        if (cpuid == NULL) {
            return -ENOMEM;
        }
        cpuid->nent = n;
        int rc = xioctl(kvm_fd, KVM_GET_SUPPORTED_CPUID, cpuid);
        if (rc == 0) {
            rc = xioctl(vcpu_fd, KVM_SET_CPUID2, cpuid);
        }
        free(cpuid);
        if (rc != -E2BIG) {
            return rc < 0 ? rc : 0;
        }
    }
    return -E2BIG;
}

/* The largest vCPU index the VM takes plus one (KVM_CAP_MAX_VCPU_ID, else _MAX_VCPUS, else 4). */
static int max_vcpu_ids(int vm_fd)
{
    int n = kvm_check_extension(vm_fd, KVM_CAP_MAX_VCPU_ID);
    if (n <= 0) {
        n = kvm_check_extension(vm_fd, KVM_CAP_MAX_VCPUS);
    }
    return n > 0 ? n : 4;
}

/* Maps the run page of vcpu->fd into vcpu (size from KVM_GET_VCPU_MMAP_SIZE). */
static int map_run(kvm_vcpu *vcpu, int kvm_fd)
{
    int size = ioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (size < 0) {
        return -errno;
    }
    if ((size_t)size < sizeof(struct kvm_run)) {
        return -EPROTO;
    }
    void *run = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu->fd, 0);
    if (run == MAP_FAILED) {
        return -errno;
    }
    vcpu->run = run;
    vcpu->run_size = (size_t)size;
    return 0;
}

int kvm_enable_dirty_ring(int vm_fd, uint32_t entries)
{
    if (entries == 0 || (entries & (entries - 1)) || entries > (1U << 24)) {
        return -EINVAL;
    }
    struct kvm_enable_cap cap = { .cap = KVM_CAP_DIRTY_LOG_RING };
    cap.args[0] = (uint64_t)entries * sizeof(struct kvm_dirty_gfn);
    return xioctl(vm_fd, KVM_ENABLE_CAP, &cap);
}

int kvm_reset_dirty_rings(int vm_fd)
{
    return xioctl(vm_fd, KVM_RESET_DIRTY_RINGS, NULL);
}

/* Maps the dirty ring of vcpu->fd (ring_entries entries) into vcpu. */
static int map_ring(kvm_vcpu *vcpu, uint32_t ring_entries)
{
    long page = sysconf(_SC_PAGESIZE);
    size_t bytes = (size_t)ring_entries * sizeof(struct kvm_dirty_gfn);
    void *ring = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu->fd,
                      (off_t)page * KVM_DIRTY_LOG_PAGE_OFFSET);
    if (ring == MAP_FAILED) {
        return -errno;
    }
    vcpu->ring = ring;
    vcpu->ring_entries = ring_entries;
    return 0;
}

/* Collects the vCPU's dirty-ring entries: an entry of slot s (< nslots) at page offset o (< pages[s])
 * sets bit o of bitmaps[s] (NULL: ignored); every entry is marked for reset (then
 * kvm_reset_dirty_rings). The caller serialises the calls (the reaper's lock). Returns the entries
 * collected, -ENXIO without a ring. */
static int64_t harvest_ring(kvm_vcpu *vcpu, uint64_t *const *bitmaps, const uint64_t *pages, uint32_t nslots)
{
    if (vcpu == NULL || (nslots && (bitmaps == NULL || pages == NULL))) {
        return -EINVAL;
    }
    if (vcpu->ring == NULL) {
        return -ENXIO;
    }
    int64_t n = 0;
    for (;;) {
        struct kvm_dirty_gfn *e = &vcpu->ring[vcpu->ring_fetch & (vcpu->ring_entries - 1)];
        /* acquire: the slot and offset were written before the kernel published the entry */
        if (!(__atomic_load_n(&e->flags, __ATOMIC_ACQUIRE) & KVM_DIRTY_GFN_F_DIRTY)) {
            break;
        }
        uint32_t slot = e->slot & 0xffff;  /* the high half is the address space: always 0 here */
        uint64_t off = e->offset;
        if ((e->slot >> 16) == 0 && slot < nslots && bitmaps[slot] != NULL && off < pages[slot]) {
            bitmaps[slot][off / 64] |= 1ULL << (off % 64);
        }
        __atomic_store_n(&e->flags, KVM_DIRTY_GFN_F_RESET, __ATOMIC_RELEASE);
        vcpu->ring_fetch++;
        n++;
    }
    return n;
}

struct kvm_core_reaper {
    kvm_vcpu *vcpu;
    int vm_fd;
    uint32_t nslots;
    uint32_t interval_us;
    uint64_t *pages;            /* per slot */
    uint64_t **bits;            /* per slot, pages bits (NULL: not logged) */
    uint64_t total;             /* pages harvested since the start (atomic) */
    int stop;                   /* atomic */
    pthread_mutex_t lock;       /* bits */
    pthread_t thread;
};

/* One harvest into the reaper's bitmaps, lock held; re-arms what was harvested. */
static int64_t reap_locked(kvm_reaper *r)
{
    int64_t n = harvest_ring(r->vcpu, r->bits, r->pages, r->nslots);
    if (n > 0) {
        int rc = kvm_reset_dirty_rings(r->vm_fd);
        __atomic_add_fetch(&r->total, (uint64_t)n, __ATOMIC_RELAXED);
        if (rc < 0) {
            return rc;
        }
    }
    return n;
}

static void *reaper_thread(void *opaque)
{
    kvm_reaper *r = opaque;
    while (!__atomic_load_n(&r->stop, __ATOMIC_ACQUIRE)) {
        pthread_mutex_lock(&r->lock);
        int64_t n = reap_locked(r);
        pthread_mutex_unlock(&r->lock);
        /* a busy ring is looked at again soon: at full speed a guest fills it in milliseconds */
        uint32_t us = n > (int64_t)(r->vcpu->ring_entries / 8) ? r->interval_us / 5 : r->interval_us;
        struct timespec ts = { .tv_sec = us / 1000000, .tv_nsec = (long)(us % 1000000) * 1000 };
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static void reaper_free(kvm_reaper *r)
{
    if (r->bits != NULL) {
        for (uint32_t i = 0; i < r->nslots; i++) {
            free(r->bits[i]);
        }
    }
    free(r->bits);
    free(r->pages);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

/* Frees a reaper being set up and fails with err (NULL, errno set). */
static kvm_reaper *reaper_fail(kvm_reaper *r, int err)
{
    reaper_free(r);
    errno = err;
    return NULL;
}

kvm_reaper *kvm_reaper_start(kvm_vcpu *vcpu, int vm_fd, const uint64_t *pages, uint32_t nslots,
                             uint32_t interval_us)
{
    if (vcpu == NULL || vcpu->ring == NULL || (nslots && pages == NULL) || interval_us == 0) {
        errno = EINVAL;
        return NULL;
    }
    kvm_reaper *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    pthread_mutex_init(&r->lock, NULL);
    r->vcpu = vcpu, r->vm_fd = vm_fd, r->nslots = nslots, r->interval_us = interval_us;
    r->pages = calloc(nslots ? nslots : 1, sizeof(uint64_t));
    r->bits = calloc(nslots ? nslots : 1, sizeof(uint64_t *));
    if (r->pages == NULL || r->bits == NULL) {
        return reaper_fail(r, ENOMEM);
    }
    for (uint32_t i = 0; i < nslots; i++) {
        r->pages[i] = pages[i];
        if (pages[i] && (r->bits[i] = calloc((pages[i] + 63) / 64, sizeof(uint64_t))) == NULL) {
            return reaper_fail(r, ENOMEM);
        }
    }
    /* Real-time priority where allowed: a reaper held up for the few milliseconds a busy guest
     * takes to fill the ring lets it overflow (see kvm_reaper_start in kvm.h); else a normal one. */
    pthread_attr_t attr;
    struct sched_param prio = { .sched_priority = 1 };
    pthread_attr_init(&attr);
    pthread_attr_setinheritsched(&attr, PTHREAD_EXPLICIT_SCHED);
    pthread_attr_setschedpolicy(&attr, SCHED_FIFO);
    pthread_attr_setschedparam(&attr, &prio);
    int rc = pthread_create(&r->thread, &attr, reaper_thread, r);
    pthread_attr_destroy(&attr);
    if (rc == EPERM) {
        rc = pthread_create(&r->thread, NULL, reaper_thread, r);
    }
    return rc != 0 ? reaper_fail(r, rc) : r;
}

int64_t kvm_reaper_collect(kvm_reaper *r, uint64_t *const *out)
{
    if (r == NULL || (r->nslots && out == NULL)) {
        return -EINVAL;
    }
    pthread_mutex_lock(&r->lock);
    int64_t rc = reap_locked(r);
    int64_t moved = 0;
    for (uint32_t i = 0; i < r->nslots; i++) {
        if (r->bits[i] == NULL) {
            continue;
        }
        for (uint64_t w = 0; w < (r->pages[i] + 63) / 64; w++) {
            uint64_t v = r->bits[i][w];
            if (v) {
                if (out[i] != NULL) {
                    out[i][w] |= v;
                }
                moved += __builtin_popcountll(v);
                r->bits[i][w] = 0;
            }
        }
    }
    pthread_mutex_unlock(&r->lock);
    return rc < 0 ? rc : moved;
}

uint64_t kvm_reaper_total(kvm_reaper *r)
{
    return r == NULL ? 0 : __atomic_load_n(&r->total, __ATOMIC_RELAXED);
}

void kvm_reaper_stop(kvm_reaper *r)
{
    if (r == NULL) {
        return;
    }
    __atomic_store_n(&r->stop, 1, __ATOMIC_RELEASE);
    pthread_join(r->thread, NULL);
    reaper_free(r);
}

kvm_vcpu *kvm_vcpu_new(int kvm_fd, int vm_fd, int index, uint32_t ring_entries)
{
    if (index < 0 || index >= KVM_CORE_MAX_VCPUS || index >= max_vcpu_ids(vm_fd)) {
        errno = EINVAL;
        return NULL;
    }
    kvm_vcpu *vcpu = calloc(1, sizeof(*vcpu));
    if (vcpu == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    vcpu->fd = ioctl(vm_fd, KVM_CREATE_VCPU, (unsigned long)index);
    int rc = vcpu->fd < 0 ? -errno : map_run(vcpu, kvm_fd);
    if (rc == 0 && ring_entries) {
        rc = map_ring(vcpu, ring_entries);
    }
    if (rc == 0) {
        rc = set_supported_cpuid(kvm_fd, vcpu->fd);
    }
    if (rc < 0) {
        kvm_vcpu_free(vcpu);
        errno = -rc;
        return NULL;
    }
    return vcpu;
}

void kvm_vcpu_free(kvm_vcpu *vcpu)
{
    if (vcpu == NULL) {
        return;
    }
    if (vcpu->run != NULL) {
        munmap(vcpu->run, vcpu->run_size);
    }
    if (vcpu->ring != NULL) {
        munmap(vcpu->ring, (size_t)vcpu->ring_entries * sizeof(struct kvm_dirty_gfn));
    }
    if (vcpu->fd >= 0) {
        close(vcpu->fd);
    }
    free(vcpu);
}

int kvm_vcpu_get_regs(kvm_vcpu *vcpu, kvm_core_regs *out)
{
    struct kvm_regs r;
    if (vcpu == NULL || out == NULL) {
        return -EINVAL;
    }
    int rc = xioctl(vcpu->fd, KVM_GET_REGS, &r);
    if (rc < 0) {
        return rc;
    }
    *out = (kvm_core_regs){
        .rax = r.rax, .rbx = r.rbx, .rcx = r.rcx, .rdx = r.rdx,
        .rsi = r.rsi, .rdi = r.rdi, .rsp = r.rsp, .rbp = r.rbp,
        .r8 = r.r8, .r9 = r.r9, .r10 = r.r10, .r11 = r.r11,
        .r12 = r.r12, .r13 = r.r13, .r14 = r.r14, .r15 = r.r15,
        .rip = r.rip, .rflags = r.rflags,
    };
    return 0;
}

int kvm_vcpu_set_regs(kvm_vcpu *vcpu, const kvm_core_regs *in)
{
    if (vcpu == NULL || in == NULL) {
        return -EINVAL;
    }
    struct kvm_regs r = {
        .rax = in->rax, .rbx = in->rbx, .rcx = in->rcx, .rdx = in->rdx,
        .rsi = in->rsi, .rdi = in->rdi, .rsp = in->rsp, .rbp = in->rbp,
        .r8 = in->r8, .r9 = in->r9, .r10 = in->r10, .r11 = in->r11,
        .r12 = in->r12, .r13 = in->r13, .r14 = in->r14, .r15 = in->r15,
        .rip = in->rip, .rflags = in->rflags,
    };
    return xioctl(vcpu->fd, KVM_SET_REGS, &r);
}

/* The kernel's segment as ours, and back. */
static kvm_core_segment seg_from_kvm(const struct kvm_segment *s)
{
    return (kvm_core_segment){
        .base = s->base, .limit = s->limit, .selector = s->selector, .type = s->type,
        .present = s->present, .dpl = s->dpl, .db = s->db, .s = s->s, .l = s->l, .g = s->g,
        .avl = s->avl, .unusable = s->unusable,
    };
}

static struct kvm_segment seg_to_kvm(const kvm_core_segment *s)
{
    return (struct kvm_segment){
        .base = s->base, .limit = s->limit, .selector = s->selector, .type = s->type,
        .present = s->present, .dpl = s->dpl, .db = s->db, .s = s->s, .l = s->l, .g = s->g,
        .avl = s->avl, .unusable = s->unusable,
    };
}

int kvm_vcpu_get_sregs(kvm_vcpu *vcpu, kvm_core_sregs *out)
{
    struct kvm_sregs s;
    if (vcpu == NULL || out == NULL) {
        return -EINVAL;
    }
    int rc = xioctl(vcpu->fd, KVM_GET_SREGS, &s);
    if (rc < 0) {
        return rc;
    }
    *out = (kvm_core_sregs){
        .cs = seg_from_kvm(&s.cs), .ds = seg_from_kvm(&s.ds), .es = seg_from_kvm(&s.es),
        .fs = seg_from_kvm(&s.fs), .gs = seg_from_kvm(&s.gs), .ss = seg_from_kvm(&s.ss),
        .tr = seg_from_kvm(&s.tr), .ldt = seg_from_kvm(&s.ldt),
        .gdt = { .base = s.gdt.base, .limit = s.gdt.limit },
        .idt = { .base = s.idt.base, .limit = s.idt.limit },
        .cr0 = s.cr0, .cr2 = s.cr2, .cr3 = s.cr3, .cr4 = s.cr4, .cr8 = s.cr8,
        .efer = s.efer, .apic_base = s.apic_base,
    };
    return 0;
}

int kvm_vcpu_set_sregs(kvm_vcpu *vcpu, const kvm_core_sregs *in)
{
    struct kvm_sregs s;
    if (vcpu == NULL || in == NULL) {
        return -EINVAL;
    }
    int rc = xioctl(vcpu->fd, KVM_GET_SREGS, &s);  /* keeps the interrupt bitmap */
    if (rc < 0) {
        return rc;
    }
    s.cs = seg_to_kvm(&in->cs), s.ds = seg_to_kvm(&in->ds), s.es = seg_to_kvm(&in->es);
    s.fs = seg_to_kvm(&in->fs), s.gs = seg_to_kvm(&in->gs), s.ss = seg_to_kvm(&in->ss);
    s.tr = seg_to_kvm(&in->tr), s.ldt = seg_to_kvm(&in->ldt);
    s.gdt.base = in->gdt.base, s.gdt.limit = in->gdt.limit;
    s.idt.base = in->idt.base, s.idt.limit = in->idt.limit;
    s.cr0 = in->cr0, s.cr2 = in->cr2, s.cr3 = in->cr3, s.cr4 = in->cr4, s.cr8 = in->cr8;
    s.efer = in->efer, s.apic_base = in->apic_base;
    return xioctl(vcpu->fd, KVM_SET_SREGS, &s);
}

int kvm_vcpu_get_fpu(kvm_vcpu *vcpu, kvm_core_fpu *out)
{
    struct kvm_fpu f;
    if (vcpu == NULL || out == NULL) {
        return -EINVAL;
    }
    int rc = xioctl(vcpu->fd, KVM_GET_FPU, &f);
    if (rc < 0) {
        return rc;
    }
    memcpy(out->fpr, f.fpr, sizeof(out->fpr));
    memcpy(out->xmm, f.xmm, sizeof(out->xmm));
    out->fcw = f.fcw, out->fsw = f.fsw, out->ftwx = f.ftwx, out->last_opcode = f.last_opcode;
    out->last_ip = f.last_ip, out->last_dp = f.last_dp, out->mxcsr = f.mxcsr;
    return 0;
}

int kvm_vcpu_set_fpu(kvm_vcpu *vcpu, const kvm_core_fpu *in)
{
    if (vcpu == NULL || in == NULL) {
        return -EINVAL;
    }
    struct kvm_fpu f;
    memset(&f, 0, sizeof(f));
    memcpy(f.fpr, in->fpr, sizeof(f.fpr));
    memcpy(f.xmm, in->xmm, sizeof(f.xmm));
    f.fcw = in->fcw, f.fsw = in->fsw, f.ftwx = in->ftwx, f.last_opcode = in->last_opcode;
    f.last_ip = in->last_ip, f.last_dp = in->last_dp, f.mxcsr = in->mxcsr;
    return xioctl(vcpu->fd, KVM_SET_FPU, &f);
}

/* A kvm_msrs with room for n entries (zeroed), or NULL. */
static struct kvm_msrs *msrs_new(uint32_t n)
{
    struct kvm_msrs *m = calloc(1, sizeof(*m) + n * sizeof(struct kvm_msr_entry));
    if (m != NULL) {
        m->nmsrs = n;
    }
    return m;
}

int kvm_vcpu_get_msrs(kvm_vcpu *vcpu, const uint32_t *index, uint64_t *values, uint32_t n)
{
    if (vcpu == NULL || index == NULL || values == NULL || n > KVM_CORE_MAX_MSRS) {
        return -EINVAL;
    }
    struct kvm_msrs *m = msrs_new(n);
    if (m == NULL) {
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < n; i++) {
        m->entries[i].index = index[i];
    }
    int rc = xioctl(vcpu->fd, KVM_GET_MSRS, m);
    for (int i = 0; i < rc; i++) {  /* rc: entries read */
        values[i] = m->entries[i].data;
    }
    free(m);
    return rc;
}

int kvm_vcpu_set_msrs(kvm_vcpu *vcpu, const uint32_t *index, const uint64_t *values, uint32_t n)
{
    if (vcpu == NULL || index == NULL || values == NULL || n > KVM_CORE_MAX_MSRS) {
        return -EINVAL;
    }
    struct kvm_msrs *m = msrs_new(n);
    if (m == NULL) {
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < n; i++) {
        m->entries[i].index = index[i];
        m->entries[i].data = values[i];
    }
    int rc = xioctl(vcpu->fd, KVM_SET_MSRS, m);
    free(m);
    return rc;
}

static void kick_handler(int sig)
{
    (void)sig;  /* its only job is to interrupt KVM_RUN */
}

int kvm_kick_signal_init(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = kick_handler;  /* no SA_RESTART: KVM_RUN returns EINTR */
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGUSR1, &sa, NULL) < 0) {
        return -errno;
    }
    return SIGUSR1;
}

/* A real-mode segment: selector, base selector * 16, 64 KiB limit, present; code or data. */
static void real_mode_segment(kvm_core_segment *seg, uint16_t selector, int code)
{
    *seg = (kvm_core_segment){
        .base = (uint64_t)selector << 4, .limit = 0xffff, .selector = selector,
        .type = code ? 0xb : 0x3, .present = 1, .s = 1,
    };
}

int kvm_vcpu_reset_real_mode(kvm_vcpu *vcpu, uint16_t cs, uint64_t ip)
{
    kvm_core_sregs s;
    int rc = kvm_vcpu_get_sregs(vcpu, &s);
    if (rc < 0) {
        return rc;
    }
    real_mode_segment(&s.cs, cs, 1);
    real_mode_segment(&s.ds, 0, 0);
    real_mode_segment(&s.es, 0, 0);
    real_mode_segment(&s.fs, 0, 0);
    real_mode_segment(&s.gs, 0, 0);
    real_mode_segment(&s.ss, 0, 0);
    s.cr0 &= ~(uint64_t)0x80000001;  /* PG, PE */
    s.efer = 0;
    s.idt = (kvm_core_dtable){ .base = 0, .limit = 0x3ff };
    rc = kvm_vcpu_set_sregs(vcpu, &s);
    if (rc < 0) {
        return rc;
    }
    kvm_core_regs r = { .rip = ip & 0xffff, .rflags = 0x2 };
    vcpu->pending_in = vcpu->pending_mmio = 0;
    return kvm_vcpu_set_regs(vcpu, &r);
}

/* The port I/O exit of run into out: for OUT the bytes (capped at KVM_CORE_IO_DATA_MAX); for
 * IN the length kvm_vcpu_complete_in may answer. -EPROTO for data outside the run pages. */
static int io_exit(kvm_vcpu *vcpu, kvm_core_exit *out)
{
    const struct kvm_run *run = vcpu->run;
    uint64_t total = (uint64_t)run->io.size * run->io.count;
    if (run->io.data_offset > vcpu->run_size || total > vcpu->run_size - run->io.data_offset
        || total > UINT32_MAX) {
        return -EPROTO;
    }
    out->io_direction = run->io.direction;
    out->io_size = run->io.size;
    out->io_port = run->io.port;
    out->io_count = run->io.count;
    out->io_total = (uint32_t)total;
    if (run->io.direction == KVM_EXIT_IO_OUT) {
        out->data_len = total < KVM_CORE_IO_DATA_MAX ? (uint32_t)total : KVM_CORE_IO_DATA_MAX;
        memcpy(out->data, (const uint8_t *)run + run->io.data_offset, out->data_len);
    } else {
        vcpu->pending_in = (uint32_t)total;
    }
    return 0;
}

/* The MMIO exit of run into out (written bytes for a write; a read awaits completion). */
static int mmio_exit(kvm_vcpu *vcpu, kvm_core_exit *out)
{
    const struct kvm_run *run = vcpu->run;
    if (run->mmio.len == 0 || run->mmio.len > sizeof(run->mmio.data)) {
        return -EPROTO;
    }
    out->mmio_phys_addr = run->mmio.phys_addr;
    out->mmio_len = run->mmio.len;
    out->mmio_is_write = run->mmio.is_write;
    if (run->mmio.is_write) {
        out->data_len = run->mmio.len;
        memcpy(out->data, run->mmio.data, run->mmio.len);
    } else {
        vcpu->pending_mmio = run->mmio.len;
    }
    return 0;
}

int kvm_vcpu_run(kvm_vcpu *vcpu, kvm_core_exit *out)
{
    if (vcpu == NULL || out == NULL) {
        return -EINVAL;
    }
    memset(out, 0, offsetof(kvm_core_exit, data));
    vcpu->pending_in = vcpu->pending_mmio = 0;
    if (ioctl(vcpu->fd, KVM_RUN, 0UL) < 0) {
        if (errno == EINTR || errno == EAGAIN) {
            out->reason = KVM_EXIT_INTR;
            return 0;
        }
        return -errno;
    }
    struct kvm_run *run = vcpu->run;
    out->reason = run->exit_reason;
    switch (run->exit_reason) {
    case KVM_EXIT_IO:
        return io_exit(vcpu, out);
    case KVM_EXIT_MMIO:
        return mmio_exit(vcpu, out);
    case KVM_EXIT_INTERNAL_ERROR:
        out->error = run->internal.suberror;
        out->ndata = run->internal.ndata < 16 ? run->internal.ndata : 16;
        memcpy(out->idata, run->internal.data, out->ndata * sizeof(uint64_t));
        return 0;
    case KVM_EXIT_FAIL_ENTRY:
        out->error = run->fail_entry.hardware_entry_failure_reason;
        return 0;
    default:
        return 0;
    }
}

int kvm_vcpu_complete_in(kvm_vcpu *vcpu, const uint8_t *data, uint32_t len)
{
    if (vcpu == NULL || data == NULL || len == 0 || len > vcpu->pending_in) {
        return -EINVAL;
    }
    /* io_exit checked that data_offset + pending_in lies inside the run pages */
    memcpy((uint8_t *)vcpu->run + vcpu->run->io.data_offset, data, len);
    vcpu->pending_in = 0;
    return 0;
}

int kvm_vcpu_complete_mmio_read(kvm_vcpu *vcpu, const uint8_t *data, uint32_t len)
{
    if (vcpu == NULL || data == NULL || len == 0 || len > vcpu->pending_mmio) {
        return -EINVAL;
    }
    memcpy(vcpu->run->mmio.data, data, len);
    vcpu->pending_mmio = 0;
    return 0;
}

void kvm_vcpu_request_interrupt_window(kvm_vcpu *vcpu, int on)
{
    if (vcpu != NULL) {
        vcpu->run->request_interrupt_window = on ? 1 : 0;
    }
}

int kvm_vcpu_ready_for_interrupt(kvm_vcpu *vcpu)
{
    if (vcpu == NULL) {
        return -EINVAL;
    }
    return vcpu->run->ready_for_interrupt_injection && vcpu->run->if_flag;
}

int kvm_vcpu_inject_irq(kvm_vcpu *vcpu, uint32_t vector)
{
    if (vcpu == NULL || vector > 255) {
        return -EINVAL;
    }
    struct kvm_interrupt irq = { .irq = vector };
    return xioctl(vcpu->fd, KVM_INTERRUPT, &irq);
}

void kvm_vcpu_set_immediate_exit(kvm_vcpu *vcpu, int on)
{
    if (vcpu != NULL) {
        __atomic_store_n(&vcpu->run->immediate_exit, on ? 1 : 0, __ATOMIC_SEQ_CST);
    }
}
