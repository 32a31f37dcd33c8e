/*
 * abi_surface.c — one function per public type, so that libabigail sees the
 * whole ABI: `abidw` on the shared object built from this file describes
 * every struct, enum and function-pointer type of the SDK. CI compares it
 * with the committed baseline (oyako-abi.xml) using `abidiff`.
 */
#include <oyako/oyako.h>

#define OY_SURFACE(type) \
    __attribute__((visibility("default"))) void oy_abi_surface_##type(const type *p); \
    __attribute__((visibility("default"))) void oy_abi_surface_##type(const type *p) { (void)p; }

OY_SURFACE(oy_device_info)
OY_SURFACE(oy_host)
OY_SURFACE(oy_driver_meta)
OY_SURFACE(oy_device_id)
OY_SURFACE(oy_driver)
OY_SURFACE(oy_entry_args)
OY_SURFACE(oy_block_geometry)
OY_SURFACE(oy_block_request)
OY_SURFACE(oy_block_ops)
OY_SURFACE(oy_host_block)
OY_SURFACE(oy_net_info)
OY_SURFACE(oy_net_stats)
OY_SURFACE(oy_net_frame)
OY_SURFACE(oy_net_ops)
OY_SURFACE(oy_host_net)
OY_SURFACE(oy_serial_line)
OY_SURFACE(oy_serial_ops)
OY_SURFACE(oy_host_serial)
OY_SURFACE(oy_rng_ops)
OY_SURFACE(oy_host_rng)
OY_SURFACE(oy_control_method)
OY_SURFACE(oy_control_table)

__attribute__((visibility("default"))) enum oy_status oy_abi_surface_status(enum oy_status s);
__attribute__((visibility("default"))) enum oy_status oy_abi_surface_status(enum oy_status s) { return s; }
