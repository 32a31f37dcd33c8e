/*
 * nvmelite_regs.h — the nvmelite controller's programming interface, as its
 * datasheet would give it. A simplified NVMe: one namespace, one admin queue
 * pair and one I/O queue pair, 64-byte commands, 16-byte completions with a
 * phase bit, PRP data pointers, one MSI vector per completion queue.
 */
#ifndef NVMELITE_REGS_H
#define NVMELITE_REGS_H

#include <stdint.h>

#define NVL_VENDOR_ID 0x0A7Au
#define NVL_DEVICE_ID 0x0001u
#define NVL_PAGE_SIZE 4096u

/* BAR 0 registers */
#define NVL_REG_CAP 0x00    /* 64: MQES [15:0] = max queue entries - 1 */
#define NVL_REG_VS 0x08     /* 32: version, 0x00010000 */
#define NVL_REG_CC 0x14     /* 32: bit 0 EN */
#define NVL_REG_CSTS 0x1C   /* 32: bit 0 RDY, bit 1 CFS (fatal) */
#define NVL_REG_AQA 0x24    /* 32: ASQS [11:0], ACQS [27:16], sizes - 1 */
#define NVL_REG_ASQ 0x28    /* 64: admin SQ base (device address) */
#define NVL_REG_ACQ 0x30    /* 64: admin CQ base (device address) */
#define NVL_REG_DOORBELL 0x1000
#define NVL_SQ_TAIL_DB(qid) (NVL_REG_DOORBELL + (2u * (qid)) * 4u)
#define NVL_CQ_HEAD_DB(qid) (NVL_REG_DOORBELL + (2u * (qid) + 1u) * 4u)

#define NVL_CC_EN 1u
#define NVL_CSTS_RDY 1u
#define NVL_CSTS_CFS 2u

/* Admin opcodes */
#define NVL_ADM_DELETE_SQ 0x00
#define NVL_ADM_CREATE_SQ 0x01
#define NVL_ADM_DELETE_CQ 0x04
#define NVL_ADM_CREATE_CQ 0x05
#define NVL_ADM_IDENTIFY 0x06

/* I/O opcodes */
#define NVL_CMD_FLUSH 0x00
#define NVL_CMD_WRITE 0x01
#define NVL_CMD_READ 0x02

/* Identify data offsets */
#define NVL_ID_CTRL_MDTS 77     /* u8: max transfer = 2^MDTS pages */
#define NVL_ID_NS_NSZE 0        /* u64: namespace size in blocks */
#define NVL_ID_NS_LBADS 130     /* u8: block size = 2^LBADS bytes */

/* Status codes (SC, bits [8:1] of the status field) */
#define NVL_SC_SUCCESS 0x00
#define NVL_SC_INVALID_OPCODE 0x01
#define NVL_SC_INVALID_FIELD 0x02
#define NVL_SC_DATA_TRANSFER_ERROR 0x04
#define NVL_SC_INTERNAL 0x06
#define NVL_SC_LBA_RANGE 0x80

typedef struct nvl_sqe {
    uint8_t opcode;
    uint8_t flags;
    uint16_t cid;
    uint32_t nsid;
    uint64_t reserved;
    uint64_t mptr;
    uint64_t prp1;
    uint64_t prp2;
    uint32_t cdw10, cdw11, cdw12, cdw13, cdw14, cdw15;
} nvl_sqe;

typedef struct nvl_cqe {
    uint32_t result;
    uint32_t reserved;
    uint16_t sq_head;
    uint16_t sq_id;
    uint16_t cid;
    uint16_t status;   /* bit 0 phase, bits [8:1] SC, [11:9] SCT */
} nvl_cqe;

_Static_assert(sizeof(nvl_sqe) == 64, "NVMe SQE is 64 bytes");
_Static_assert(sizeof(nvl_cqe) == 16, "NVMe CQE is 16 bytes");

#endif
