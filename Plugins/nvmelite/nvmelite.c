/*
 * nvmelite.c — vendor driver for the nvmelite storage controller.
 *
 * Written only against the Oyako SDK: every access to the machine goes through
 * the host table, so this one binary runs on a bare OS and in the root
 * partition of the hypervisor unchanged.
 *
 * Shape: one admin queue pair used synchronously from attach, one I/O queue
 * pair used asynchronously by the OS's block layer. Each in-flight request
 * owns a slot (command ID) with its own preallocated PRP-list page, so the I/O
 * path never allocates. Completions are reaped in the interrupt handler.
 */
#include <oyako/oyako.h>
#include <string.h>

#include "nvmelite_regs.h"

#define NVL_ADMIN_ENTRIES 16u
#define NVL_IO_ENTRIES 64u
#define NVL_QUEUE_DEPTH 32u          /* slots; < NVL_IO_ENTRIES so the SQ never overflows */
#define NVL_ADMIN_TIMEOUT_NS 2000000000ull
#define NVL_READY_TIMEOUT_NS 2000000000ull
#define NVL_DRAIN_TIMEOUT_NS 5000000000ull

/* A build can stamp its own version: -DNVMELITE_VERSION=\"1.0.1\". */
#ifndef NVMELITE_VERSION
#define NVMELITE_VERSION "1.0.0"
#endif

OY_DRIVER_METADATA(nvl_meta) = {
    OY_META_MAGIC,
    sizeof(oy_driver_meta),
    OY_ABI_VERSION_1,
    OY_ABI_VERSION_1,
    1,
    "nvmelite",
    "Oyako Reference Devices",
    NVMELITE_VERSION,
    "Driver for the nvmelite NVMe-style storage controller",
    OY_BLOCK_EXTENSION,
    {{NVL_VENDOR_ID, NVL_DEVICE_ID}},
};

typedef struct nvl_ctx {
    const oy_host *host;
    const oy_host_block *block;
} nvl_ctx;

typedef struct nvl_slot {
    oy_block_request *request;   /* non-NULL while the slot is in flight */
    oy_dma_map *map;
    uint64_t *prp_list;          /* this slot's PRP-list page (CPU view) */
    oy_dma_addr prp_list_addr;   /* ... and its device address */
} nvl_slot;

typedef struct nvl_queue {
    oy_dma_buffer *sq_buf, *cq_buf;
    nvl_sqe *sq;
    volatile nvl_cqe *cq;
    oy_dma_addr sq_addr, cq_addr;
    uint16_t entries, qid;
    uint16_t sq_tail, cq_head;
    uint16_t phase;
} nvl_queue;

typedef struct nvl_dev {
    nvl_ctx *ctx;
    const oy_host *host;
    oy_device *device;
    oy_regs *regs;
    oy_lock *lock;               /* guards slots, io.sq_tail, outstanding, gone */
    oy_event *admin_done;
    oy_event *drained;
    oy_irq *admin_irq, *io_irq;
    oy_dma_buffer *identify_buf, *prp_buf;
    void *identify;
    oy_dma_addr identify_addr;
    nvl_queue admin, io;
    /* admin completions, written by the admin interrupt handler */
    volatile uint16_t admin_status[NVL_ADMIN_ENTRIES];
    /* Admin completions reaped so far. The interrupt handler publishes each
     * status and then the count (release); the waiter reads the count
     * (acquire) before the statuses. A volatile would not order them. */
    uint32_t admin_done_count;
    uint16_t admin_cid;
    nvl_slot slots[NVL_QUEUE_DEPTH];
    uint32_t outstanding;
    int gone, draining, enabled;
    oy_disk *disk;
    uint32_t block_size, max_blocks;
    uint64_t block_count;
} nvl_dev;

/* Live instances, so that detach twice or remove after detach is refused. */
static oy_instance_set nvl_instances;

static void nvl_log(nvl_dev *d, int32_t level, const char *msg) {
    d->host->log(d->host, d->device, level, msg);
}

static int32_t nvl_status_to_error(uint16_t status) {
    uint16_t sc = (uint16_t)((status >> 1) & 0xFF);
    uint16_t sct = (uint16_t)((status >> 9) & 0x7);
    if (sc == NVL_SC_SUCCESS && sct == 0) return OY_OK;
    if (sct == 0 && sc == NVL_SC_LBA_RANGE) return OY_E_RANGE;
    if (sct == 0 && (sc == NVL_SC_INVALID_FIELD || sc == NVL_SC_INVALID_OPCODE)) return OY_E_INVALID;
    if (sct == 0 && sc == NVL_SC_DATA_TRANSFER_ERROR) return OY_E_DMA_FAULT;
    return OY_E_IO;
}

/* ---- queues ------------------------------------------------------------------- */

static int32_t nvl_queue_alloc(nvl_dev *d, nvl_queue *q, uint16_t qid, uint16_t entries) {
    void *sq, *cq;
    int32_t rc;
    q->qid = qid;
    q->entries = entries;
    q->sq_tail = q->cq_head = 0;
    q->phase = 1;
    rc = d->host->dma_alloc(d->device, entries * sizeof(nvl_sqe), &q->sq_buf, &sq, &q->sq_addr);
    if (rc != OY_OK) return rc;
    rc = d->host->dma_alloc(d->device, entries * sizeof(nvl_cqe), &q->cq_buf, &cq, &q->cq_addr);
    if (rc != OY_OK) {
        d->host->dma_free(q->sq_buf);
        q->sq_buf = NULL;
        return rc;
    }
    q->sq = (nvl_sqe *)sq;
    q->cq = (volatile nvl_cqe *)cq;
    return OY_OK;
}

static void nvl_queue_free(nvl_dev *d, nvl_queue *q) {
    if (q->sq_buf) d->host->dma_free(q->sq_buf);
    if (q->cq_buf) d->host->dma_free(q->cq_buf);
    q->sq_buf = q->cq_buf = NULL;
}

/* Copy a command into the SQ and ring the doorbell. Caller serialises. */
static void nvl_sq_push(nvl_dev *d, nvl_queue *q, const nvl_sqe *cmd) {
    memcpy(&q->sq[q->sq_tail], cmd, sizeof(*cmd));
    q->sq_tail = (uint16_t)((q->sq_tail + 1u) % q->entries);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    d->host->reg_write32(d->regs, NVL_SQ_TAIL_DB(q->qid), q->sq_tail);
}

/* Take the next completion if its phase says it is new. Caller serialises. */
static int nvl_cq_pop(nvl_queue *q, nvl_cqe *out) {
    volatile nvl_cqe *e = &q->cq[q->cq_head];
    if ((e->status & 1u) != q->phase) return 0;
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    out->result = e->result;
    out->sq_head = e->sq_head;
    out->sq_id = e->sq_id;
    out->cid = e->cid;
    out->status = e->status;
    q->cq_head = (uint16_t)(q->cq_head + 1u);
    if (q->cq_head == q->entries) {
        q->cq_head = 0;
        q->phase ^= 1u;
    }
    return 1;
}

/* ---- interrupts ------------------------------------------------------------------ */

/* [interrupt] The admin queue's state (its CQ head, the status slots) is
 * shared with nvl_admin_batch: both touch it under d->lock, so a completion
 * that arrives late (after its command timed out) cannot race the next batch. */
static void nvl_admin_irq(void *arg) {
    nvl_dev *d = (nvl_dev *)arg;
    nvl_cqe cqe;
    int any = 0;
    d->host->lock_acquire(d->lock);
    while (nvl_cq_pop(&d->admin, &cqe)) {
        d->admin_status[cqe.cid % NVL_ADMIN_ENTRIES] = cqe.status;
        __atomic_add_fetch(&d->admin_done_count, 1u, __ATOMIC_RELEASE);
        any = 1;
    }
    if (any) d->host->reg_write32(d->regs, NVL_CQ_HEAD_DB(0), d->admin.cq_head);
    d->host->lock_release(d->lock);
    if (any) d->host->event_signal(d->admin_done);
}

/* [interrupt] Reap I/O completions; complete requests outside the lock because
 * the OS may submit the next request from inside complete(). */
static void nvl_io_irq(void *arg) {
    nvl_dev *d = (nvl_dev *)arg;
    oy_block_request *done[NVL_QUEUE_DEPTH];
    int32_t status[NVL_QUEUE_DEPTH];
    uint32_t n = 0, i;
    int signal_drained = 0;
    nvl_cqe cqe;

    d->host->lock_acquire(d->lock);
    while (n < NVL_QUEUE_DEPTH && nvl_cq_pop(&d->io, &cqe)) {
        nvl_slot *s;
        if (cqe.cid >= NVL_QUEUE_DEPTH || d->slots[cqe.cid].request == NULL) {
            nvl_log(d, OY_LOG_WARNING, "completion for a command ID that is not in flight; ignored");
            continue;
        }
        s = &d->slots[cqe.cid];
        if (s->map) d->host->dma_unmap(s->map);
        s->map = NULL;
        done[n] = s->request;
        status[n] = nvl_status_to_error(cqe.status);
        s->request = NULL;
        d->outstanding--;
        n++;
    }
    d->host->reg_write32(d->regs, NVL_CQ_HEAD_DB(d->io.qid), d->io.cq_head);
    if (d->draining && d->outstanding == 0) signal_drained = 1;
    d->host->lock_release(d->lock);

    for (i = 0; i < n; i++) d->ctx->block->complete(done[i], status[i]);
    if (signal_drained) d->host->event_signal(d->drained);
    /* At most one batch per interrupt: if completions remain, the head
     * doorbell above left them in the CQ and the controller raises the
     * vector again, so other devices' interrupts get their turn. */
}

/* ---- admin commands --------------------------------------------------------------- */

/* [passive] Submit `n` admin commands at once and wait for all of them:
 * the controller executes admin commands in order, so dependent commands
 * (create the CQ, then the SQ on it) may share one round trip. Returns the
 * first failure. */
static int32_t nvl_admin_batch(nvl_dev *d, nvl_sqe *cmds, uint32_t n) {
    uint64_t deadline = d->host->monotonic_ns(d->host) + NVL_ADMIN_TIMEOUT_NS;
    uint32_t i, target;
    int32_t rc = OY_OK;
    if (n == 0 || n >= NVL_ADMIN_ENTRIES) return OY_E_INVALID;
    d->host->lock_acquire(d->lock);
    target = __atomic_load_n(&d->admin_done_count, __ATOMIC_ACQUIRE) + n;
    for (i = 0; i < n; i++) {
        d->admin_cid = (uint16_t)(d->admin_cid + 1u);
        cmds[i].cid = d->admin_cid;
        d->admin_status[d->admin_cid % NVL_ADMIN_ENTRIES] = 0xFFFF;
        nvl_sq_push(d, &d->admin, &cmds[i]);
    }
    d->host->lock_release(d->lock);
    while ((int32_t)(__atomic_load_n(&d->admin_done_count, __ATOMIC_ACQUIRE) - target) < 0) {
        uint64_t now = d->host->monotonic_ns(d->host);
        if (now >= deadline) {
            nvl_log(d, OY_LOG_ERROR, "admin command timed out (no completion interrupt)");
            return OY_E_TIMEOUT;
        }
        d->host->event_wait(d->admin_done, deadline - now);
    }
    d->host->lock_acquire(d->lock);
    for (i = 0; i < n && rc == OY_OK; i++) rc = nvl_status_to_error(d->admin_status[cmds[i].cid % NVL_ADMIN_ENTRIES]);
    d->host->lock_release(d->lock);
    return rc;
}

/* [passive] Poll CSTS.RDY until it equals `ready`, backing off from 2 µs
 * to 1 ms: a controller is usually ready within microseconds. */
static int32_t nvl_wait_ready(nvl_dev *d, uint32_t ready) {
    uint64_t deadline = d->host->monotonic_ns(d->host) + NVL_READY_TIMEOUT_NS;
    uint64_t pause = 2000;
    for (;;) {
        uint32_t csts = d->host->reg_read32(d->regs, NVL_REG_CSTS);
        if (csts == 0xFFFFFFFFu) return OY_E_DEVICE_GONE;
        if (csts & NVL_CSTS_CFS) return OY_E_IO;
        if ((csts & NVL_CSTS_RDY) == ready) return OY_OK;
        if (d->host->monotonic_ns(d->host) >= deadline) return OY_E_TIMEOUT;
        d->host->event_wait(d->admin_done, pause);
        if (pause < 1000000) pause *= 2;
    }
}

/* Identify the controller and the namespace (one 4 KiB page each) and create
 * the I/O queue pair: one batch of four admin commands. */
static int32_t nvl_bring_up(nvl_dev *d) {
    nvl_sqe cmds[4];
    int32_t rc;
    const uint8_t *controller = (const uint8_t *)d->identify;
    const uint8_t *ns = controller + NVL_PAGE_SIZE;
    uint8_t mdts, lbads;

    memset(cmds, 0, sizeof(cmds));
    cmds[0].opcode = NVL_ADM_IDENTIFY;
    cmds[0].prp1 = d->identify_addr;
    cmds[0].cdw10 = 1; /* CNS 1: controller */
    cmds[1].opcode = NVL_ADM_IDENTIFY;
    cmds[1].nsid = 1;
    cmds[1].prp1 = d->identify_addr + NVL_PAGE_SIZE;
    cmds[1].cdw10 = 0; /* CNS 0: namespace 1 */
    cmds[2].opcode = NVL_ADM_CREATE_CQ;
    cmds[2].prp1 = d->io.cq_addr;
    cmds[2].cdw10 = (uint32_t)d->io.qid | ((uint32_t)(d->io.entries - 1u) << 16);
    cmds[2].cdw11 = 1u | 2u | (1u << 16); /* physically contiguous, interrupts on, vector 1 */
    cmds[3].opcode = NVL_ADM_CREATE_SQ;
    cmds[3].prp1 = d->io.sq_addr;
    cmds[3].cdw10 = (uint32_t)d->io.qid | ((uint32_t)(d->io.entries - 1u) << 16);
    cmds[3].cdw11 = 1u | ((uint32_t)d->io.qid << 16);
    if ((rc = nvl_admin_batch(d, cmds, 4)) != OY_OK) return rc;

    mdts = controller[NVL_ID_CTRL_MDTS];
    memcpy(&d->block_count, ns + NVL_ID_NS_NSZE, sizeof(d->block_count));
    lbads = ns[NVL_ID_NS_LBADS];
    if (lbads < 9 || lbads > 16 || d->block_count == 0 || mdts == 0 || mdts > 10) {
        nvl_log(d, OY_LOG_ERROR, "identify data out of range");
        return OY_E_IO;
    }
    d->block_size = 1u << lbads;
    d->max_blocks = (uint32_t)(((1u << mdts) * NVL_PAGE_SIZE) / d->block_size);
    return OY_OK;
}

/* ---- block class ------------------------------------------------------------------ */

/* [any-thread] Gives back a slot submit reserved and will not push, and the
 * mapping it made for it (if any). What submit answers: `rc`, or OY_OK when
 * remove got there first: it completed every reserved request, this one
 * too, with OY_E_DEVICE_GONE, and a request is completed or refused, never
 * both. */
static int32_t nvl_unreserve(nvl_dev *d, nvl_slot *slot, oy_block_request *req, oy_dma_map *map, int32_t rc) {
    int mine;
    d->host->lock_acquire(d->lock);
    mine = slot->request == req;
    if (mine) {
        slot->request = NULL;
        d->outstanding--;
    }
    d->host->lock_release(d->lock);
    if (map) d->host->dma_unmap(map);
    return mine ? rc : OY_OK;
}

/* [any-thread] */
static int32_t nvl_submit(void *instance, oy_block_request *req) {
    nvl_dev *d = (nvl_dev *)instance;
    nvl_sqe cmd;
    nvl_slot *slot = NULL;
    oy_dma_map *map = NULL;
    uint16_t cid = 0;
    uint32_t dir = OY_DMA_TO_DEVICE;
    size_t length = 0;
    oy_dma_addr addr = 0;
    int32_t rc;

    if (d == NULL || req == NULL || req->struct_size < sizeof(oy_block_request)) return OY_E_INVALID;
    memset(&cmd, 0, sizeof(cmd));
    switch (req->op) {
    case OY_BLOCK_FLUSH:
        cmd.opcode = NVL_CMD_FLUSH;
        break;
    case OY_BLOCK_READ:
    case OY_BLOCK_WRITE:
        if (req->block_count == 0 || req->data == NULL) return OY_E_INVALID;
        /* Well formed but more than the device can do, or past its end. */
        if (req->block_count > d->max_blocks) return OY_E_RANGE;
        if (req->lba >= d->block_count || req->block_count > d->block_count - req->lba) return OY_E_RANGE;
        cmd.opcode = req->op == OY_BLOCK_READ ? NVL_CMD_READ : NVL_CMD_WRITE;
        dir = req->op == OY_BLOCK_READ ? OY_DMA_FROM_DEVICE : OY_DMA_TO_DEVICE;
        length = (size_t)req->block_count * d->block_size;
        break;
    default:
        return OY_E_INVALID;
    }

    d->host->lock_acquire(d->lock);
    if (d->gone) {
        d->host->lock_release(d->lock);
        return OY_E_DEVICE_GONE;
    }
    if (d->draining || d->disk == NULL) {
        d->host->lock_release(d->lock);
        return OY_E_STATE;
    }
    for (cid = 0; cid < NVL_QUEUE_DEPTH; cid++) {
        if (d->slots[cid].request == NULL) {
            slot = &d->slots[cid];
            slot->request = req; /* reserve */
            d->outstanding++;
            break;
        }
    }
    d->host->lock_release(d->lock);
    if (slot == NULL) return OY_E_BUSY;

    if (length > 0) {
        rc = d->host->dma_map(d->device, req->data, length, dir, &map, &addr);
        if (rc != OY_OK) return nvl_unreserve(d, slot, req, NULL, rc);
        /* PRP1 covers up to the end of its page; PRP2 is either the second
         * page or a list of the remaining pages. */
        {
            uint64_t first = NVL_PAGE_SIZE - (addr % NVL_PAGE_SIZE);
            cmd.prp1 = addr;
            if (length > first) {
                uint64_t rest = length - first;
                uint64_t next = addr + first;
                if (rest <= NVL_PAGE_SIZE) {
                    cmd.prp2 = next;
                } else {
                    uint32_t i = 0;
                    for (; rest > 0; i++) {
                        slot->prp_list[i] = next + (uint64_t)i * NVL_PAGE_SIZE;
                        rest = rest > NVL_PAGE_SIZE ? rest - NVL_PAGE_SIZE : 0;
                    }
                    cmd.prp2 = slot->prp_list_addr;
                }
            }
        }
        cmd.cdw10 = (uint32_t)(req->lba & 0xFFFFFFFFu);
        cmd.cdw11 = (uint32_t)(req->lba >> 32);
        cmd.cdw12 = req->block_count - 1u;
    }
    cmd.nsid = 1;
    cmd.cid = cid;

    d->host->lock_acquire(d->lock);
    if (d->gone || slot->request != req) {
        /* Removed between reserve and push: nothing reached the device. */
        d->host->lock_release(d->lock);
        return nvl_unreserve(d, slot, req, map, OY_E_DEVICE_GONE);
    }
    slot->map = map;
    nvl_sq_push(d, &d->io, &cmd);
    d->host->lock_release(d->lock);
    return OY_OK;
}

static const oy_block_ops nvl_block_ops = {sizeof(oy_block_ops), 0, nvl_submit};

/* ---- lifecycle ------------------------------------------------------------------------ */

static int32_t nvl_init(const oy_host *host, void **out_ctx) {
    nvl_ctx *ctx;
    const oy_host_block *block;
    if (host == NULL || out_ctx == NULL) return OY_E_INVALID;
    block = (const oy_host_block *)host->get_extension(host, OY_BLOCK_EXTENSION);
    if (block == NULL || block->struct_size < sizeof(oy_host_block)) return OY_E_NOT_SUPPORTED;
    ctx = (nvl_ctx *)host->mem_alloc(host, NULL, sizeof(*ctx));
    if (ctx == NULL) return OY_E_NOMEM;
    ctx->host = host;
    ctx->block = block;
    *out_ctx = ctx;
    return OY_OK;
}

static void nvl_deinit(void *ctx) {
    nvl_ctx *c = (nvl_ctx *)ctx;
    if (c == NULL) return;
    c->host->mem_free(c->host, c);
}

static int32_t nvl_probe(void *ctx, const oy_device_info *info) {
    (void)ctx;
    if (info == NULL || info->struct_size < sizeof(oy_device_info)) return OY_E_INVALID;
    if (info->vendor_id != NVL_VENDOR_ID || info->device_id != NVL_DEVICE_ID) return OY_E_NOT_SUPPORTED;
    if (info->bar_count < 1 || info->bar_kind[0] != OY_BAR_MMIO || info->irq_count < 2) return OY_E_NOT_SUPPORTED;
    return OY_OK;
}

/* Release whatever attach acquired; safe on a partially built instance. */
static void nvl_teardown(nvl_dev *d) {
    const oy_host *h = d->host;
    if (d->enabled && !d->gone) {
        h->reg_write32(d->regs, NVL_REG_CC, 0);
        (void)nvl_wait_ready(d, 0);
    }
    if (d->io_irq) h->irq_unhook(d->io_irq);
    if (d->admin_irq) h->irq_unhook(d->admin_irq);
    nvl_queue_free(d, &d->io);
    nvl_queue_free(d, &d->admin);
    if (d->prp_buf) h->dma_free(d->prp_buf);
    if (d->identify_buf) h->dma_free(d->identify_buf);
    if (d->drained) h->event_destroy(d->drained);
    if (d->admin_done) h->event_destroy(d->admin_done);
    if (d->lock) h->lock_destroy(d->lock);
    if (d->regs) h->regs_unmap(d->regs);
    h->mem_free(h, d);
}

static int32_t nvl_attach(void *ctx, oy_device *device, void **out_instance) {
    nvl_ctx *c = (nvl_ctx *)ctx;
    const oy_host *h;
    nvl_dev *d;
    uint64_t bar_size = 0, cap;
    void *prp_cpu = NULL;
    oy_dma_addr prp_addr = 0;
    oy_block_geometry geo;
    uint32_t i;
    int32_t rc;

    if (c == NULL || device == NULL || out_instance == NULL) return OY_E_INVALID;
    h = c->host;
    d = (nvl_dev *)h->mem_alloc(h, device, sizeof(*d));
    if (d == NULL) return OY_E_NOMEM;
    d->ctx = c;
    d->host = h;
    d->device = device;

#define NVL_TRY(expr)            \
    do {                         \
        rc = (expr);             \
        if (rc != OY_OK) goto fail; \
    } while (0)

    NVL_TRY(h->regs_map(device, 0, &d->regs, &bar_size));
    if (bar_size < NVL_CQ_HEAD_DB(1) + 4u) {
        nvl_log(d, OY_LOG_ERROR, "register window too small for two queue pairs");
        rc = OY_E_NOT_SUPPORTED;
        goto fail;
    }
    cap = h->reg_read64(d->regs, NVL_REG_CAP);
    if (cap == UINT64_MAX) {
        rc = OY_E_DEVICE_GONE;
        goto fail;
    }
    if ((cap & 0xFFFFu) + 1u < NVL_IO_ENTRIES) {
        nvl_log(d, OY_LOG_ERROR, "controller queues too small");
        rc = OY_E_NOT_SUPPORTED;
        goto fail;
    }
    NVL_TRY(h->lock_create(h, device, &d->lock));
    NVL_TRY(h->event_create(h, device, &d->admin_done));
    NVL_TRY(h->event_create(h, device, &d->drained));
    NVL_TRY(h->dma_alloc(device, 2 * NVL_PAGE_SIZE, &d->identify_buf, &d->identify, &d->identify_addr));
    NVL_TRY(h->dma_alloc(device, NVL_QUEUE_DEPTH * NVL_PAGE_SIZE, &d->prp_buf, &prp_cpu, &prp_addr));
    for (i = 0; i < NVL_QUEUE_DEPTH; i++) {
        d->slots[i].prp_list = (uint64_t *)((uint8_t *)prp_cpu + (size_t)i * NVL_PAGE_SIZE);
        d->slots[i].prp_list_addr = prp_addr + (oy_dma_addr)i * NVL_PAGE_SIZE;
    }
    NVL_TRY(nvl_queue_alloc(d, &d->admin, 0, NVL_ADMIN_ENTRIES));
    NVL_TRY(nvl_queue_alloc(d, &d->io, 1, NVL_IO_ENTRIES));
    NVL_TRY(h->irq_hook(device, 0, nvl_admin_irq, d, &d->admin_irq));
    NVL_TRY(h->irq_hook(device, 1, nvl_io_irq, d, &d->io_irq));

    /* Reset, program the admin queue, enable. */
    h->reg_write32(d->regs, NVL_REG_CC, 0);
    NVL_TRY(nvl_wait_ready(d, 0));
    h->reg_write32(d->regs, NVL_REG_AQA,
                   (uint32_t)(NVL_ADMIN_ENTRIES - 1u) | ((uint32_t)(NVL_ADMIN_ENTRIES - 1u) << 16));
    h->reg_write64(d->regs, NVL_REG_ASQ, d->admin.sq_addr);
    h->reg_write64(d->regs, NVL_REG_ACQ, d->admin.cq_addr);
    h->reg_write32(d->regs, NVL_REG_CC, NVL_CC_EN);
    d->enabled = 1;
    NVL_TRY(nvl_wait_ready(d, 1));

    NVL_TRY(nvl_bring_up(d));
    if (d->max_blocks * d->block_size > NVL_PAGE_SIZE * (NVL_PAGE_SIZE / sizeof(uint64_t))) {
        d->max_blocks = (uint32_t)((NVL_PAGE_SIZE * (NVL_PAGE_SIZE / sizeof(uint64_t))) / d->block_size);
    }

    memset(&geo, 0, sizeof(geo));
    geo.struct_size = sizeof(geo);
    geo.block_size = d->block_size;
    geo.block_count = d->block_count;
    geo.max_transfer_blocks = d->max_blocks;
    geo.queue_depth = NVL_QUEUE_DEPTH;
    geo.flags = OY_BLOCK_CAN_FLUSH;
    if (!oy_instance_add(&nvl_instances, d)) {
        rc = OY_E_BUSY;
        goto fail;
    }
    rc = c->block->register_disk(device, &geo, &nvl_block_ops, d, &d->disk);
    if (rc != OY_OK) {
        oy_instance_take(&nvl_instances, d);
        goto fail;
    }
#undef NVL_TRY

    *out_instance = d;
    return OY_OK;

fail:
    nvl_teardown(d);
    return rc;
}

/* [passive] Fail every in-flight request with `status`. */
static void nvl_fail_outstanding(nvl_dev *d, int32_t status) {
    uint32_t i;
    for (i = 0; i < NVL_QUEUE_DEPTH; i++) {
        oy_block_request *req = NULL;
        d->host->lock_acquire(d->lock);
        if (d->slots[i].request != NULL) {
            req = d->slots[i].request;
            if (d->slots[i].map) d->host->dma_unmap(d->slots[i].map);
            d->slots[i].map = NULL;
            d->slots[i].request = NULL;
            d->outstanding--;
        }
        d->host->lock_release(d->lock);
        if (req) d->ctx->block->complete(req, status);
    }
}

static int32_t nvl_detach(void *instance) {
    nvl_dev *d = (nvl_dev *)instance;
    uint32_t outstanding;
    if (d == NULL) return OY_E_INVALID;
    if (!oy_instance_take(&nvl_instances, d)) return OY_E_STATE;
    if (d->disk) {
        d->ctx->block->unregister_disk(d->disk);
    }
    d->host->lock_acquire(d->lock);
    d->draining = 1;
    d->disk = NULL;
    outstanding = d->outstanding;
    d->host->lock_release(d->lock);
    if (outstanding > 0 && !d->gone) {
        uint64_t deadline = d->host->monotonic_ns(d->host) + NVL_DRAIN_TIMEOUT_NS;
        for (;;) {
            uint64_t now;
            d->host->lock_acquire(d->lock);
            outstanding = d->outstanding;
            d->host->lock_release(d->lock);
            now = d->host->monotonic_ns(d->host);
            if (outstanding == 0 || now >= deadline) break;
            d->host->event_wait(d->drained, deadline - now);
        }
    }
    nvl_fail_outstanding(d, d->gone ? OY_E_DEVICE_GONE : OY_E_CANCELED);
    nvl_teardown(d);
    return OY_OK;
}

static void nvl_remove(void *instance) {
    nvl_dev *d = (nvl_dev *)instance;
    if (!oy_instance_contains(&nvl_instances, d)) return;
    d->host->lock_acquire(d->lock);
    d->gone = 1;
    d->host->lock_release(d->lock);
    nvl_log(d, OY_LOG_WARNING, "device removed; failing outstanding requests");
    nvl_fail_outstanding(d, OY_E_DEVICE_GONE);
}

/* ---- control methods ------------------------------------------------------------- */

static uint64_t nvl_m_block_count(void *instance) {
    nvl_dev *d = (nvl_dev *)instance;
    return oy_instance_contains(&nvl_instances, d) ? d->block_count : 0;
}

static uint32_t nvl_m_block_size(void *instance) {
    nvl_dev *d = (nvl_dev *)instance;
    return oy_instance_contains(&nvl_instances, d) ? d->block_size : 0;
}

static uint32_t nvl_m_outstanding(void *instance) {
    nvl_dev *d = (nvl_dev *)instance;
    uint32_t n;
    if (!oy_instance_contains(&nvl_instances, d)) return 0;
    d->host->lock_acquire(d->lock);
    n = d->outstanding;
    d->host->lock_release(d->lock);
    return n;
}

static const oy_control_method nvl_methods[] = {
    {sizeof(oy_control_method), 0, "block_count", "u64()", "Namespace size in logical blocks", (oy_control_fn)nvl_m_block_count},
    {sizeof(oy_control_method), 0, "block_size", "u32()", "Logical block size in bytes", (oy_control_fn)nvl_m_block_size},
    {sizeof(oy_control_method), 0, "outstanding", "u32()", "Requests in flight right now", (oy_control_fn)nvl_m_outstanding},
};

static const oy_control_table nvl_control = {sizeof(oy_control_table), 3, nvl_methods};

static const void *nvl_get_extension(void *instance, const char *id) {
    (void)instance;
    if (id == NULL) return NULL;
    if (strcmp(id, OY_BLOCK_EXTENSION) == 0) return &nvl_block_ops;
    if (strcmp(id, OY_CONTROL_EXTENSION) == 0) return &nvl_control;
    return NULL;
}

static const oy_driver nvl_driver = {
    sizeof(oy_driver), 0, &nvl_meta,
    nvl_init, nvl_deinit, nvl_probe, nvl_attach, nvl_detach, nvl_remove, nvl_get_extension,
};

OY_EXPORT int32_t oy_driver_entry(oy_entry_args *args) {
    return oy_negotiate(args, OY_ABI_VERSION_1, OY_ABI_VERSION_1, &nvl_driver);
}
