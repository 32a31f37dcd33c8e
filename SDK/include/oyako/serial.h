/*
 * oyako/serial.h — the serial port class, extension ID "oyako.serial/1".
 *
 * Host side: `host->get_extension(host, OY_SERIAL_EXTENSION)` returns an
 * oy_host_serial table. In attach the driver registers its port. The OS
 * writes through ops->write, which never blocks: it takes what fits in the
 * driver's transmit buffer and the driver calls tx_ready when there is room
 * again. Received bytes go to the OS in order through receive.
 */
#ifndef OYAKO_SERIAL_H
#define OYAKO_SERIAL_H

#include <oyako/types.h>
#include <oyako/errors.h>

OY_EXTERN_C_BEGIN

#define OY_SERIAL_EXTENSION "oyako.serial/1"

enum oy_serial_parity { OY_PARITY_NONE = 0, OY_PARITY_ODD = 1, OY_PARITY_EVEN = 2 };

typedef struct oy_serial_line {
    uint32_t struct_size;
    uint32_t baud;        /* bits per second, e.g. 115200 */
    uint8_t data_bits;    /* 5 to 8 */
    uint8_t parity;       /* oy_serial_parity */
    uint8_t stop_bits;    /* 1 or 2 */
    uint8_t reserved;
} oy_serial_line;

OY_STATIC_ASSERT(sizeof(oy_serial_line) == 12, "oy_serial_line v1 size");

typedef struct oy_serial_ops {
    uint32_t struct_size;
    uint32_t reserved;
    /* Queue up to `length` bytes (copied); `*written` says how many were
     * taken, possibly 0. Never blocks. [any-thread] */
    int32_t (*write)(void *instance, const void *data, uint32_t length, uint32_t *written);
    /* Change speed and framing. OY_E_RANGE for a rate the device cannot do.
     * [passive] */
    int32_t (*set_line)(void *instance, const oy_serial_line *line);
} oy_serial_ops;

OY_STATIC_ASSERT(sizeof(oy_serial_ops) == 24, "oy_serial_ops v1 size");

typedef struct oy_host_serial {
    uint32_t struct_size;
    uint32_t reserved;
    /* Register a port for `device`. `line` and `ops` are copied. [passive] */
    int32_t (*register_port)(oy_device *device, const oy_serial_line *line, const oy_serial_ops *ops, void *instance, oy_serial **out);
    /* Unregister: the OS writes nothing more. Waits for a `write` call in
     * progress to return, so do not hold a lock your `write` takes while
     * calling it. [passive] */
    void (*unregister_port)(oy_serial *port);
    /* Bytes arrived, in order; copied before return. [any-thread] */
    void (*receive)(oy_serial *port, const void *data, uint32_t length);
    /* The transmit buffer has room again after a short write. The OS
     * writes more from a thread of its own, never from inside this call.
     * [any-thread] */
    void (*tx_ready)(oy_serial *port);
    /* Bytes were lost (receive overrun, framing error). [any-thread] */
    void (*error)(oy_serial *port, uint32_t lost);
} oy_host_serial;

OY_STATIC_ASSERT(sizeof(oy_host_serial) == 48, "oy_host_serial v1 size");

OY_EXTERN_C_END

#endif /* OYAKO_SERIAL_H */
