/*
 * oyako/instances.h — a header-only helper for drivers: a small lock-free
 * set of live instance pointers, so that calls in the wrong state (detach
 * twice, remove after detach) are answered with OY_E_STATE instead of
 * touching freed memory. No ABI: everything here is static inline.
 *
 *   static oy_instance_set my_instances;
 *   attach:  if (!oy_instance_add(&my_instances, d)) { ...fail with OY_E_BUSY... }
 *   detach:  if (!oy_instance_take(&my_instances, d)) return OY_E_STATE;
 *   remove:  if (!oy_instance_contains(&my_instances, d)) return;
 */
#ifndef OYAKO_INSTANCES_H
#define OYAKO_INSTANCES_H

#include <oyako/types.h>

OY_EXTERN_C_BEGIN

#define OY_INSTANCE_SET_SIZE 64

typedef struct oy_instance_set {
    void *slots[OY_INSTANCE_SET_SIZE];
} oy_instance_set;

/* Adds `p`; 0 when the set is full or p is NULL. [any-thread] */
static inline int oy_instance_add(oy_instance_set *set, void *p) {
    int i;
    if (p == NULL) return 0;
    for (i = 0; i < OY_INSTANCE_SET_SIZE; i++) {
        void *expected = NULL;
        if (__atomic_compare_exchange_n(&set->slots[i], &expected, p, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) return 1;
    }
    return 0;
}

/* Nonzero when `p` is in the set. [any-thread] */
static inline int oy_instance_contains(oy_instance_set *set, const void *p) {
    int i;
    if (p == NULL) return 0;
    for (i = 0; i < OY_INSTANCE_SET_SIZE; i++) {
        if (__atomic_load_n(&set->slots[i], __ATOMIC_ACQUIRE) == p) return 1;
    }
    return 0;
}

/* Removes `p`; 0 when it was not there (already taken, or never added).
 * Exactly one of several concurrent takers succeeds. [any-thread] */
static inline int oy_instance_take(oy_instance_set *set, void *p) {
    int i;
    if (p == NULL) return 0;
    for (i = 0; i < OY_INSTANCE_SET_SIZE; i++) {
        void *expected = p;
        if (__atomic_compare_exchange_n(&set->slots[i], &expected, NULL, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) return 1;
    }
    return 0;
}

OY_EXTERN_C_END

#endif /* OYAKO_INSTANCES_H */
