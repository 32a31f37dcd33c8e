#include "CVMBusLayouts.h"

#include <stddef.h>
#include <string.h>

struct hdr { uint32_t msgtype; uint32_t padding; } __attribute__((packed));

struct offer_channel {
    struct hdr header;
    uint8_t if_type[16];
    uint8_t if_instance[16];
    uint64_t reserved1, reserved2;
    uint16_t chn_flags;
    uint16_t mmio_megabytes;
    uint8_t user_def[120];
    uint16_t sub_channel_index;
    uint16_t reserved3;
    uint32_t child_relid;
    uint8_t monitorid;
    uint8_t monitor_allocated; /* bit 0; reserved:7 */
    uint16_t is_dedicated_interrupt; /* bit 0; reserved1:15 */
    uint32_t connection_id;
} __attribute__((packed));
_Static_assert(sizeof(struct offer_channel) == 196, "vmbus_channel_offer_channel is 196 bytes");
_Static_assert(offsetof(struct offer_channel, child_relid) == 184, "child_relid");
_Static_assert(offsetof(struct offer_channel, connection_id) == 192, "connection_id");

struct open_channel {
    struct hdr header;
    uint32_t child_relid;
    uint32_t openid;
    uint32_t ringbuffer_gpadlhandle;
    uint32_t target_vp;
    uint32_t downstream_ringbuffer_pageoffset;
    uint8_t userdata[120];
} __attribute__((packed));
_Static_assert(sizeof(struct open_channel) == 148, "vmbus_channel_open_channel");

struct gpa_range { uint32_t byte_count; uint32_t byte_offset; uint64_t pfn_array[]; } __attribute__((packed));
struct gpadl_header {
    struct hdr header;
    uint32_t child_relid;
    uint32_t gpadl;
    uint16_t range_buflen;
    uint16_t rangecount;
    struct gpa_range range[];
} __attribute__((packed));
_Static_assert(sizeof(struct gpadl_header) == 20, "vmbus_channel_gpadl_header without its ranges");

struct initiate_contact {
    struct hdr header;
    uint32_t vmbus_version_requested;
    uint32_t target_vcpu;
    uint8_t msg_sint;
    uint8_t msg_vtl;
    uint8_t reserved[2];
    uint32_t feature_flags;
    uint64_t monitor_page1;
    uint64_t monitor_page2;
} __attribute__((packed));
_Static_assert(sizeof(struct initiate_contact) == 40, "vmbus_channel_initiate_contact");

struct version_response {
    struct hdr header;
    uint8_t version_supported;
    uint8_t connection_state;
    uint16_t padding;
    uint32_t msg_conn_id;
} __attribute__((packed));
_Static_assert(sizeof(struct version_response) == 16, "vmbus_channel_version_response");

uint32_t oy_layout_offer(uint8_t *out, const uint8_t if_type[16], const uint8_t if_instance[16], uint32_t relid, uint32_t connection_id) {
    struct offer_channel m;
    memset(&m, 0, sizeof m);
    m.header.msgtype = 1;
    memcpy(m.if_type, if_type, 16);
    memcpy(m.if_instance, if_instance, 16);
    m.child_relid = relid;
    m.connection_id = connection_id;
    memcpy(out, &m, sizeof m);
    return sizeof m;
}

uint32_t oy_layout_open_channel(uint8_t *out, uint32_t relid, uint32_t openid, uint32_t gpadl, uint32_t target_vp, uint32_t downstream_offset) {
    struct open_channel m;
    memset(&m, 0, sizeof m);
    m.header.msgtype = 5;
    m.child_relid = relid;
    m.openid = openid;
    m.ringbuffer_gpadlhandle = gpadl;
    m.target_vp = target_vp;
    m.downstream_ringbuffer_pageoffset = downstream_offset;
    memcpy(out, &m, sizeof m);
    return sizeof m;
}

uint32_t oy_layout_gpadl_header(uint8_t *out, uint32_t relid, uint32_t gpadl, uint32_t total_pages, const uint64_t *pfns, uint32_t pfn_count) {
    struct gpadl_header m;
    struct gpa_range r;
    memset(&m, 0, sizeof m);
    m.header.msgtype = 8;
    m.child_relid = relid;
    m.gpadl = gpadl;
    m.range_buflen = (uint16_t)(sizeof(struct gpa_range) + total_pages * sizeof(uint64_t));
    m.rangecount = 1;
    r.byte_count = total_pages * 4096u;
    r.byte_offset = 0;
    memcpy(out, &m, sizeof m);
    memcpy(out + sizeof m, &r, sizeof r);
    memcpy(out + sizeof m + sizeof r, pfns, pfn_count * sizeof(uint64_t));
    return (uint32_t)(sizeof m + sizeof r + pfn_count * sizeof(uint64_t));
}

uint32_t oy_layout_initiate_contact(uint8_t *out, uint32_t version, uint32_t target_vp, uint8_t msg_sint) {
    struct initiate_contact m;
    memset(&m, 0, sizeof m);
    m.header.msgtype = 14;
    m.vmbus_version_requested = version;
    m.target_vcpu = target_vp;
    m.msg_sint = msg_sint;
    memcpy(out, &m, sizeof m);
    return sizeof m;
}

uint32_t oy_layout_version_response(uint8_t *out, uint8_t supported, uint8_t state, uint32_t msg_conn_id) {
    struct version_response m;
    memset(&m, 0, sizeof m);
    m.header.msgtype = 15;
    m.version_supported = supported;
    m.connection_state = state;
    m.msg_conn_id = msg_conn_id;
    memcpy(out, &m, sizeof m);
    return sizeof m;
}
