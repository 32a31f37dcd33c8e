/* e1klite_regs.h — the e1klite controller's programming interface (an
 * e1000-shaped NIC): legacy 16-byte descriptors, head/tail registers, an
 * interrupt cause register cleared on read, and a receive-address table. */
#ifndef E1KLITE_REGS_H
#define E1KLITE_REGS_H

#include <stdint.h>

#define E1K_VENDOR_ID 0x0A7Au
#define E1K_DEVICE_ID 0x0002u

#define E1K_CTRL 0x0000u
#define E1K_STATUS 0x0008u
#define E1K_ICR 0x00C0u
#define E1K_ICS 0x00C8u
#define E1K_IMS 0x00D0u
#define E1K_IMC 0x00D8u
#define E1K_RCTL 0x0100u
#define E1K_TCTL 0x0400u
#define E1K_RDBAL 0x2800u
#define E1K_RDBAH 0x2804u
#define E1K_RDLEN 0x2808u
#define E1K_RDH 0x2810u
#define E1K_RDT 0x2818u
#define E1K_TDBAL 0x3800u
#define E1K_TDBAH 0x3804u
#define E1K_TDLEN 0x3808u
#define E1K_TDH 0x3810u
#define E1K_TDT 0x3818u
#define E1K_RAL(n) (0x5400u + 8u * (n))
#define E1K_RAH(n) (0x5404u + 8u * (n))
#define E1K_RA_ENTRIES 16u

#define E1K_CTRL_RST (1u << 26)
#define E1K_STATUS_LU (1u << 1)
#define E1K_RCTL_EN (1u << 1)
#define E1K_RCTL_UPE (1u << 3)
#define E1K_RCTL_MPE (1u << 4)
#define E1K_RCTL_BAM (1u << 15)
#define E1K_TCTL_EN (1u << 1)
#define E1K_RAH_AV (1u << 31)

#define E1K_ICR_TXDW (1u << 0)
#define E1K_ICR_LSC (1u << 2)
#define E1K_ICR_RXO (1u << 6)
#define E1K_ICR_RXT0 (1u << 7)

#define E1K_TXD_EOP 0x01u
#define E1K_TXD_IFCS 0x02u
#define E1K_TXD_RS 0x08u
#define E1K_DESC_DD 0x01u
#define E1K_RXD_EOP 0x02u

typedef struct e1k_desc {
    uint64_t buffer;
    uint16_t length;
    uint8_t cso_or_csum_lo;
    uint8_t cmd_or_csum_hi;
    uint8_t status;
    uint8_t css_or_errors;
    uint16_t special;
} e1k_desc;

_Static_assert(sizeof(e1k_desc) == 16, "e1000 descriptors are 16 bytes");

#endif
