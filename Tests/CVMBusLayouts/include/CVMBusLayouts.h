/* The VMBus channel messages as Linux declares them (include/linux/hyperv.h),
 * written from the documented field order and checked with _Static_assert:
 * the tests fill these structs in C and compare the bytes with what the
 * Swift encoders produce. Test-only; nothing here ships. */
#ifndef CVMBUS_LAYOUTS_H
#define CVMBUS_LAYOUTS_H

#include <stdint.h>

/* Fill `out` with the message, built through the C struct; return its size. */
uint32_t oy_layout_offer(uint8_t *out, const uint8_t if_type[16], const uint8_t if_instance[16], uint32_t relid, uint32_t connection_id);
uint32_t oy_layout_open_channel(uint8_t *out, uint32_t relid, uint32_t openid, uint32_t gpadl, uint32_t target_vp, uint32_t downstream_offset);
uint32_t oy_layout_gpadl_header(uint8_t *out, uint32_t relid, uint32_t gpadl, uint32_t total_pages, const uint64_t *pfns, uint32_t pfn_count);
uint32_t oy_layout_initiate_contact(uint8_t *out, uint32_t version, uint32_t target_vp, uint8_t msg_sint);
uint32_t oy_layout_version_response(uint8_t *out, uint8_t supported, uint8_t state, uint32_t msg_conn_id);
/* The small channel messages: those that carry only u32 fields after the
 * header (rescind, close, relid released, open result, GPADL created,
 * teardown, torndown, and the header-only ones). `fields` are the u32s in
 * struct order; `type` picks the struct. */
uint32_t oy_layout_small_message(uint8_t *out, uint32_t type, const uint32_t *fields);
uint32_t oy_layout_gpadl_body(uint8_t *out, uint32_t msgnumber, uint32_t gpadl, const uint64_t *pfns, uint32_t pfn_count);
/* struct vmpacket_descriptor: the 16 bytes before every ring packet. */
uint32_t oy_layout_packet_descriptor(uint8_t *out, uint16_t type, uint16_t offset8, uint16_t len8, uint16_t flags, uint64_t trans_id);

/* Storage (drivers/scsi/storvsc_drv.c): a vstor_packet carrying a vmscsi_request. */
uint32_t oy_layout_vstor_srb(uint8_t *out, uint32_t operation, uint32_t flags, uint32_t status,
                             uint8_t srb_status, uint8_t scsi_status, uint8_t lun, uint8_t data_in,
                             uint32_t data_transfer_length, const uint8_t *cdb_or_sense, uint8_t cdb_length,
                             uint8_t sense_info_length, uint32_t srb_flags, uint32_t time_out_value);
/* A vstor_packet carrying vmstorage_channel_properties. */
uint32_t oy_layout_vstor_properties(uint8_t *out, uint16_t max_channel_cnt, uint32_t flags, uint32_t max_transfer_bytes);
/* A QUERY_PROTOCOL_VERSION vstor_packet. */
uint32_t oy_layout_vstor_version(uint8_t *out, uint16_t major_minor);

/* Network (drivers/net/hyperv/hyperv_net.h): NVSP messages, padded to 32 bytes. */
uint32_t oy_layout_nvsp_init(uint8_t *out, uint32_t min_ver, uint32_t max_ver);
uint32_t oy_layout_nvsp_init_complete(uint8_t *out, uint32_t version, uint32_t status);
uint32_t oy_layout_nvsp_send_receive_buffer(uint8_t *out, uint32_t gpadl, uint16_t id);
uint32_t oy_layout_nvsp_receive_buffer_complete(uint8_t *out, uint32_t status, uint32_t section_size, uint32_t sections);
uint32_t oy_layout_nvsp_send_buffer_complete(uint8_t *out, uint32_t status, uint32_t section_size);
uint32_t oy_layout_nvsp_send_rndis_packet(uint8_t *out, uint32_t channel_type, uint32_t index, uint32_t size);
/* RNDIS messages. */
uint32_t oy_layout_rndis_packet(uint8_t *out, const uint8_t *frame, uint32_t frame_len);
uint32_t oy_layout_rndis_initialize(uint8_t *out, uint32_t req_id, uint32_t max_xfer);
uint32_t oy_layout_rndis_initialize_complete(uint8_t *out, uint32_t req_id, uint32_t status, uint32_t max_pkt, uint32_t max_xfer, uint32_t align);
uint32_t oy_layout_rndis_query(uint8_t *out, uint32_t req_id, uint32_t oid);
uint32_t oy_layout_rndis_query_complete(uint8_t *out, uint32_t req_id, uint32_t status, const uint8_t *info, uint32_t info_len);

#endif
