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

struct vmscsi_win8_extension {
    uint16_t reserve;
    uint8_t queue_tag;
    uint8_t queue_action;
    uint32_t srb_flags;
    uint32_t time_out_value;
    uint32_t queue_sort_ey;
} __attribute__((packed));

struct vmscsi_request {
    uint16_t length;
    uint8_t srb_status;
    uint8_t scsi_status;
    uint8_t port_number;
    uint8_t path_id;
    uint8_t target_id;
    uint8_t lun;
    uint8_t cdb_length;
    uint8_t sense_info_length;
    uint8_t data_in;
    uint8_t reserved;
    uint32_t data_transfer_length;
    union { uint8_t cdb[16]; uint8_t sense_data[20]; uint8_t reserved_array[20]; };
    struct vmscsi_win8_extension win8_extension;
} __attribute__((packed));
_Static_assert(sizeof(struct vmscsi_request) == 52, "vmscsi_request (Win8) is 52 bytes");
_Static_assert(offsetof(struct vmscsi_request, data_transfer_length) == 12, "data_transfer_length");
_Static_assert(offsetof(struct vmscsi_request, cdb) == 16, "cdb");
_Static_assert(offsetof(struct vmscsi_request, win8_extension) == 36, "win8_extension");

struct vmstorage_channel_properties {
    uint32_t reserved;
    uint16_t max_channel_cnt;
    uint16_t reserved1;
    uint32_t flags;
    uint32_t max_transfer_bytes;
    uint64_t reserved2;
} __attribute__((packed));
_Static_assert(sizeof(struct vmstorage_channel_properties) == 24, "vmstorage_channel_properties");

struct vmstorage_protocol_version { uint16_t major_minor; uint16_t revision; } __attribute__((packed));

struct vstor_packet {
    uint32_t operation;
    uint32_t flags;
    uint32_t status;
    union {
        struct vmscsi_request vm_srb;
        struct vmstorage_channel_properties storage_channel_properties;
        struct vmstorage_protocol_version version;
        uint16_t sub_channel_count;
        uint8_t buffer[0x34];
    };
} __attribute__((packed));
_Static_assert(sizeof(struct vstor_packet) == 64, "vstor_packet is 64 bytes");
_Static_assert(offsetof(struct vstor_packet, vm_srb) == 12, "the union follows operation, flags, status");

uint32_t oy_layout_vstor_srb(uint8_t *out, uint32_t operation, uint32_t flags, uint32_t status,
                             uint8_t srb_status, uint8_t scsi_status, uint8_t lun, uint8_t data_in,
                             uint32_t data_transfer_length, const uint8_t *cdb_or_sense, uint8_t cdb_length,
                             uint8_t sense_info_length, uint32_t srb_flags, uint32_t time_out_value) {
    struct vstor_packet p;
    memset(&p, 0, sizeof p);
    p.operation = operation;
    p.flags = flags;
    p.status = status;
    p.vm_srb.length = sizeof(struct vmscsi_request);
    p.vm_srb.srb_status = srb_status;
    p.vm_srb.scsi_status = scsi_status;
    p.vm_srb.lun = lun;
    p.vm_srb.data_in = data_in;
    p.vm_srb.data_transfer_length = data_transfer_length;
    memcpy(p.vm_srb.reserved_array, cdb_or_sense, 20);
    p.vm_srb.cdb_length = cdb_length;
    p.vm_srb.sense_info_length = sense_info_length;
    p.vm_srb.win8_extension.srb_flags = srb_flags;
    p.vm_srb.win8_extension.time_out_value = time_out_value;
    memcpy(out, &p, sizeof p);
    return sizeof p;
}

uint32_t oy_layout_vstor_properties(uint8_t *out, uint16_t max_channel_cnt, uint32_t flags, uint32_t max_transfer_bytes) {
    struct vstor_packet p;
    memset(&p, 0, sizeof p);
    p.operation = 1; /* VSTOR_OPERATION_COMPLETE_IO */
    p.storage_channel_properties.max_channel_cnt = max_channel_cnt;
    p.storage_channel_properties.flags = flags;
    p.storage_channel_properties.max_transfer_bytes = max_transfer_bytes;
    memcpy(out, &p, sizeof p);
    return sizeof p;
}

uint32_t oy_layout_vstor_version(uint8_t *out, uint16_t major_minor) {
    struct vstor_packet p;
    memset(&p, 0, sizeof p);
    p.operation = 9; /* VSTOR_OPERATION_QUERY_PROTOCOL_VERSION */
    p.flags = 1;     /* REQUEST_COMPLETION_FLAG */
    p.version.major_minor = major_minor;
    memcpy(out, &p, sizeof p);
    return sizeof p;
}

/* ---- NVSP ---- */
struct nvsp_message_init { uint32_t min_protocol_ver; uint32_t max_protocol_ver; } __attribute__((packed));
struct nvsp_message_init_complete { uint32_t negotiated_protocol_ver; uint32_t max_mdl_chain_len; uint32_t status; } __attribute__((packed));
struct nvsp_1_message_send_receive_buffer { uint32_t gpadl_handle; uint16_t id; } __attribute__((packed));
struct nvsp_1_receive_buffer_section { uint32_t offset; uint32_t sub_alloc_size; uint32_t num_sub_allocs; uint32_t end_offset; } __attribute__((packed));
struct nvsp_1_message_send_receive_buffer_complete {
    uint32_t status;
    uint32_t num_sections;
    struct nvsp_1_receive_buffer_section sections[1];
} __attribute__((packed));
struct nvsp_1_message_send_send_buffer_complete { uint32_t status; uint32_t section_size; } __attribute__((packed));
struct nvsp_1_message_send_rndis_packet { uint32_t channel_type; uint32_t send_buf_section_index; uint32_t send_buf_section_size; } __attribute__((packed));
_Static_assert(sizeof(struct nvsp_1_message_send_receive_buffer) == 6, "send_receive_buffer is packed to 6 bytes");
_Static_assert(sizeof(struct nvsp_1_message_send_receive_buffer_complete) == 24, "one section");

struct nvsp_message {
    uint32_t msg_type;
    union {
        struct nvsp_message_init init;
        struct nvsp_message_init_complete init_complete;
        struct nvsp_1_message_send_receive_buffer send_recv_buf;
        struct nvsp_1_message_send_receive_buffer_complete send_recv_buf_complete;
        struct nvsp_1_message_send_send_buffer_complete send_send_buf_complete;
        struct nvsp_1_message_send_rndis_packet send_rndis_pkt;
        uint8_t pad[28]; /* Hyper-V answers nothing shorter than 32 bytes */
    } msg;
} __attribute__((packed));
_Static_assert(sizeof(struct nvsp_message) == 32, "NVSP messages go out as 32 bytes");
_Static_assert(offsetof(struct nvsp_message, msg) == 4, "the message follows its type");

static uint32_t nvsp(uint8_t *out, struct nvsp_message *m) { memcpy(out, m, sizeof *m); return sizeof *m; }

uint32_t oy_layout_nvsp_init(uint8_t *out, uint32_t min_ver, uint32_t max_ver) {
    struct nvsp_message m; memset(&m, 0, sizeof m);
    m.msg_type = 1; m.msg.init.min_protocol_ver = min_ver; m.msg.init.max_protocol_ver = max_ver;
    return nvsp(out, &m);
}
uint32_t oy_layout_nvsp_init_complete(uint8_t *out, uint32_t version, uint32_t status) {
    struct nvsp_message m; memset(&m, 0, sizeof m);
    m.msg_type = 2; m.msg.init_complete.negotiated_protocol_ver = version; m.msg.init_complete.status = status;
    return nvsp(out, &m);
}
uint32_t oy_layout_nvsp_send_receive_buffer(uint8_t *out, uint32_t gpadl, uint16_t id) {
    struct nvsp_message m; memset(&m, 0, sizeof m);
    m.msg_type = 101; m.msg.send_recv_buf.gpadl_handle = gpadl; m.msg.send_recv_buf.id = id;
    return nvsp(out, &m);
}
uint32_t oy_layout_nvsp_receive_buffer_complete(uint8_t *out, uint32_t status, uint32_t section_size, uint32_t sections) {
    struct nvsp_message m; memset(&m, 0, sizeof m);
    m.msg_type = 102;
    m.msg.send_recv_buf_complete.status = status;
    m.msg.send_recv_buf_complete.num_sections = 1;
    m.msg.send_recv_buf_complete.sections[0].offset = 0;
    m.msg.send_recv_buf_complete.sections[0].sub_alloc_size = section_size;
    m.msg.send_recv_buf_complete.sections[0].num_sub_allocs = sections;
    m.msg.send_recv_buf_complete.sections[0].end_offset = section_size * sections;
    return nvsp(out, &m);
}
uint32_t oy_layout_nvsp_send_buffer_complete(uint8_t *out, uint32_t status, uint32_t section_size) {
    struct nvsp_message m; memset(&m, 0, sizeof m);
    m.msg_type = 105; m.msg.send_send_buf_complete.status = status; m.msg.send_send_buf_complete.section_size = section_size;
    return nvsp(out, &m);
}
uint32_t oy_layout_nvsp_send_rndis_packet(uint8_t *out, uint32_t channel_type, uint32_t index, uint32_t size) {
    struct nvsp_message m; memset(&m, 0, sizeof m);
    m.msg_type = 107;
    m.msg.send_rndis_pkt.channel_type = channel_type;
    m.msg.send_rndis_pkt.send_buf_section_index = index;
    m.msg.send_rndis_pkt.send_buf_section_size = size;
    return nvsp(out, &m);
}

/* ---- RNDIS ---- */
struct rndis_header { uint32_t ndis_msg_type; uint32_t msg_len; } __attribute__((packed));
struct rndis_packet {
    uint32_t data_offset, data_len, oob_data_offset, oob_data_len, num_oob_data_elements;
    uint32_t per_pkt_info_offset, per_pkt_info_len, vc_handle, reserved;
} __attribute__((packed));
struct rndis_initialize_request { uint32_t req_id, major_ver, minor_ver, max_xfer_size; } __attribute__((packed));
struct rndis_initialize_complete {
    uint32_t req_id, status, major_ver, minor_ver, dev_flags, medium, max_pkt_per_msg, max_xfer_size;
    uint32_t pkt_alignment_factor, af_list_offset, af_list_size;
} __attribute__((packed));
struct rndis_query_request { uint32_t req_id, oid, info_buflen, info_buf_offset, dev_vc_handle; } __attribute__((packed));
struct rndis_query_complete { uint32_t req_id, status, info_buflen, info_buf_offset; } __attribute__((packed));
_Static_assert(sizeof(struct rndis_header) + sizeof(struct rndis_packet) == 44, "an RNDIS packet's data starts 44 bytes in");
_Static_assert(sizeof(struct rndis_initialize_complete) == 44, "rndis_initialize_complete");
_Static_assert(sizeof(struct rndis_query_request) == 20, "rndis_query_request");

uint32_t oy_layout_rndis_packet(uint8_t *out, const uint8_t *frame, uint32_t frame_len) {
    struct rndis_header h = { 1, (uint32_t)(sizeof h + sizeof(struct rndis_packet) + frame_len) };
    struct rndis_packet p; memset(&p, 0, sizeof p);
    p.data_offset = sizeof p; /* counted from the start of struct rndis_packet */
    p.data_len = frame_len;
    memcpy(out, &h, sizeof h);
    memcpy(out + sizeof h, &p, sizeof p);
    memcpy(out + sizeof h + sizeof p, frame, frame_len);
    return h.msg_len;
}
uint32_t oy_layout_rndis_initialize(uint8_t *out, uint32_t req_id, uint32_t max_xfer) {
    struct rndis_header h = { 2, sizeof h + sizeof(struct rndis_initialize_request) };
    struct rndis_initialize_request r = { req_id, 1, 0, max_xfer };
    memcpy(out, &h, sizeof h); memcpy(out + sizeof h, &r, sizeof r);
    return h.msg_len;
}
uint32_t oy_layout_rndis_initialize_complete(uint8_t *out, uint32_t req_id, uint32_t status, uint32_t max_pkt, uint32_t max_xfer, uint32_t align) {
    struct rndis_header h = { 0x80000002, sizeof h + sizeof(struct rndis_initialize_complete) };
    struct rndis_initialize_complete c; memset(&c, 0, sizeof c);
    c.req_id = req_id; c.status = status; c.major_ver = 1; c.minor_ver = 0;
    c.dev_flags = 1; /* RNDIS_DF_CONNECTIONLESS */ c.medium = 0; /* NdisMedium802_3 */
    c.max_pkt_per_msg = max_pkt; c.max_xfer_size = max_xfer; c.pkt_alignment_factor = align;
    memcpy(out, &h, sizeof h); memcpy(out + sizeof h, &c, sizeof c);
    return h.msg_len;
}
uint32_t oy_layout_rndis_query(uint8_t *out, uint32_t req_id, uint32_t oid) {
    struct rndis_header h = { 4, sizeof h + sizeof(struct rndis_query_request) };
    struct rndis_query_request q = { req_id, oid, 0, 0, 0 };
    memcpy(out, &h, sizeof h); memcpy(out + sizeof h, &q, sizeof q);
    return h.msg_len;
}
uint32_t oy_layout_rndis_query_complete(uint8_t *out, uint32_t req_id, uint32_t status, const uint8_t *info, uint32_t info_len) {
    struct rndis_header h = { 0x80000004, (uint32_t)(sizeof h + sizeof(struct rndis_query_complete) + info_len) };
    struct rndis_query_complete c = { req_id, status, info_len, info_len ? (uint32_t)sizeof c : 0 };
    memcpy(out, &h, sizeof h); memcpy(out + sizeof h, &c, sizeof c); memcpy(out + sizeof h + sizeof c, info, info_len);
    return h.msg_len;
}

/* ---- The other channel messages ---- */
struct rescind_offer { struct hdr header; uint32_t child_relid; } __attribute__((packed));
struct close_channel { struct hdr header; uint32_t child_relid; } __attribute__((packed));
struct relid_released { struct hdr header; uint32_t child_relid; } __attribute__((packed));
struct open_result { struct hdr header; uint32_t child_relid; uint32_t openid; uint32_t status; } __attribute__((packed));
struct gpadl_created { struct hdr header; uint32_t child_relid; uint32_t gpadl; uint32_t creation_status; } __attribute__((packed));
struct gpadl_teardown { struct hdr header; uint32_t child_relid; uint32_t gpadl; } __attribute__((packed));
struct gpadl_torndown { struct hdr header; uint32_t gpadl; } __attribute__((packed));
struct gpadl_body { struct hdr header; uint32_t msgnumber; uint32_t gpadl; uint64_t pfn[]; } __attribute__((packed));
_Static_assert(sizeof(struct open_result) == 20, "vmbus_channel_open_result");
_Static_assert(sizeof(struct gpadl_created) == 20, "vmbus_channel_gpadl_created");
_Static_assert(sizeof(struct gpadl_body) == 16, "vmbus_channel_gpadl_body without its PFNs");

uint32_t oy_layout_small_message(uint8_t *out, uint32_t type, const uint32_t *f) {
    switch (type) {
    case 2: { struct rescind_offer m = { { 2, 0 }, f[0] }; memcpy(out, &m, sizeof m); return sizeof m; }
    case 7: { struct close_channel m = { { 7, 0 }, f[0] }; memcpy(out, &m, sizeof m); return sizeof m; }
    case 13: { struct relid_released m = { { 13, 0 }, f[0] }; memcpy(out, &m, sizeof m); return sizeof m; }
    case 6: { struct open_result m = { { 6, 0 }, f[0], f[1], f[2] }; memcpy(out, &m, sizeof m); return sizeof m; }
    case 10: { struct gpadl_created m = { { 10, 0 }, f[0], f[1], f[2] }; memcpy(out, &m, sizeof m); return sizeof m; }
    case 11: { struct gpadl_teardown m = { { 11, 0 }, f[0], f[1] }; memcpy(out, &m, sizeof m); return sizeof m; }
    case 12: { struct gpadl_torndown m = { { 12, 0 }, f[0] }; memcpy(out, &m, sizeof m); return sizeof m; }
    default: { struct hdr m = { type, 0 }; memcpy(out, &m, sizeof m); return sizeof m; } /* 3, 4, 16, 17: header only */
    }
}

uint32_t oy_layout_gpadl_body(uint8_t *out, uint32_t msgnumber, uint32_t gpadl, const uint64_t *pfns, uint32_t pfn_count) {
    struct gpadl_body b = { { 9, 0 }, msgnumber, gpadl };
    memcpy(out, &b, sizeof b);
    memcpy(out + sizeof b, pfns, pfn_count * sizeof(uint64_t));
    return (uint32_t)(sizeof b + pfn_count * sizeof(uint64_t));
}

struct vmpacket_descriptor { uint16_t type; uint16_t offset8; uint16_t len8; uint16_t flags; uint64_t trans_id; } __attribute__((packed));
_Static_assert(sizeof(struct vmpacket_descriptor) == 16, "vmpacket_descriptor");

uint32_t oy_layout_packet_descriptor(uint8_t *out, uint16_t type, uint16_t offset8, uint16_t len8, uint16_t flags, uint64_t trans_id) {
    struct vmpacket_descriptor d = { type, offset8, len8, flags, trans_id };
    memcpy(out, &d, sizeof d);
    return sizeof d;
}
