/*
 * oyako/rng.h — the entropy source class, extension ID "oyako.rng/1".
 *
 * Host side: `host->get_extension(host, OY_RNG_EXTENSION)` returns an
 * oy_host_rng table. In attach the driver registers its source with
 * register_rng, passing its oy_rng_ops; the OS then reads entropy through
 * ops->read (its /dev/random) until the driver unregisters in detach.
 */
#ifndef OYAKO_RNG_H
#define OYAKO_RNG_H

#include <oyako/types.h>
#include <oyako/errors.h>

OY_EXTERN_C_BEGIN

#define OY_RNG_EXTENSION "oyako.rng/1"

/* Largest `length` one read may ask for. */
#define OY_RNG_MAX_READ 65536u

typedef struct oy_rng_ops {
    uint32_t struct_size;
    uint32_t reserved;
    /* Fill up to `length` bytes at `buffer` with fresh entropy from the
     * device and set `*produced` to how many (possibly fewer than asked when
     * the device has no more ready; 0 only after a wait of up to 100 ms
     * found none). Never the same bytes twice. OY_E_INVALID when `buffer`
     * or `produced` is NULL or `length` is 0; OY_E_RANGE when `length` is
     * over OY_RNG_MAX_READ; OY_E_DEVICE_GONE after removal. The OS calls it
     * from one thread at a time. [passive] */
    int32_t (*read)(void *instance, void *buffer, uint32_t length, uint32_t *produced);
} oy_rng_ops;

OY_STATIC_ASSERT(sizeof(oy_rng_ops) == 16, "oy_rng_ops v1 size");

typedef struct oy_host_rng {
    uint32_t struct_size;
    uint32_t reserved;
    /* Register an entropy source for `device`. `ops` is copied; `instance`
     * is passed back to ops. [passive] */
    int32_t (*register_rng)(oy_device *device, const oy_rng_ops *ops, void *instance, oy_rng **out);
    /* Unregister: the OS reads nothing more; waits for a read in progress
     * to return. [passive] */
    void (*unregister_rng)(oy_rng *rng);
} oy_host_rng;

OY_STATIC_ASSERT(sizeof(oy_host_rng) == 24, "oy_host_rng v1 size");

OY_EXTERN_C_END

#endif /* OYAKO_RNG_H */
