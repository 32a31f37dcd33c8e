/*
 * oyako/errors.h — the one list of error codes.
 *
 * Every ABI function returns int32_t: 0 on success, a negative OY_E* code on
 * failure. The list below generates both the enum and oy_strerror(), so a code
 * and its text can never drift apart. Codes from OY_E_VENDOR_MIN to
 * OY_E_VENDOR_MAX are reserved for vendor-specific errors; the host prints
 * them as "vendor-specific error N".
 */
#ifndef OYAKO_ERRORS_H
#define OYAKO_ERRORS_H

#include <oyako/types.h>

OY_EXTERN_C_BEGIN

/* X(name, value, text). Values are part of the ABI: never renumber, only append. */
#define OY_ERROR_LIST(X)                                                              \
    X(OY_OK, 0, "success")                                                            \
    X(OY_E_INVALID, -1, "invalid argument")                                           \
    X(OY_E_NOMEM, -2, "out of memory")                                                \
    X(OY_E_INCOMPATIBLE, -3, "no ABI version in common between host and driver")      \
    X(OY_E_NOT_SUPPORTED, -4, "operation or device not supported")                    \
    X(OY_E_BUSY, -5, "resource busy, retry later")                                    \
    X(OY_E_IO, -6, "device reported an I/O error")                                    \
    X(OY_E_TIMEOUT, -7, "timed out")                                                  \
    X(OY_E_DEVICE_GONE, -8, "device was removed")                                     \
    X(OY_E_STATE, -9, "call not valid in the current state")                          \
    X(OY_E_WRONG_CONTEXT, -10, "service not allowed from the calling context")        \
    X(OY_E_RANGE, -11, "argument out of range")                                       \
    X(OY_E_DMA_FAULT, -12, "device access outside memory mapped for DMA")             \
    X(OY_E_NOT_FOUND, -13, "not found")                                               \
    X(OY_E_CANCELED, -14, "request canceled")

enum oy_status {
#define OY_ERROR_ENUM_(name, value, text) name = value,
    OY_ERROR_LIST(OY_ERROR_ENUM_)
#undef OY_ERROR_ENUM_
    OY_E_VENDOR_MAX = -65536,  /* -0x10000 */
    OY_E_VENDOR_MIN = -131071  /* -0x1FFFF */
};

/* Nonzero when `code` is in the vendor-specific range. */
static inline int oy_is_vendor_error(int32_t code) {
    return code >= OY_E_VENDOR_MIN && code <= OY_E_VENDOR_MAX;
}

/* Nonzero when `code` is OY_OK, a listed OY_E* code, or a vendor code. */
static inline int oy_is_defined_error(int32_t code) {
    switch (code) {
#define OY_ERROR_CASE_(name, value, text) case value:
        OY_ERROR_LIST(OY_ERROR_CASE_)
#undef OY_ERROR_CASE_
        return 1;
    default:
        return oy_is_vendor_error(code);
    }
}

/* A static, human-readable string for any code. Never returns NULL. [any-thread] */
static inline const char *oy_strerror(int32_t code) {
    switch (code) {
#define OY_ERROR_TEXT_(name, value, text) case value: return text;
        OY_ERROR_LIST(OY_ERROR_TEXT_)
#undef OY_ERROR_TEXT_
    default:
        return oy_is_vendor_error(code) ? "vendor-specific error" : "unknown error code";
    }
}

/* The symbolic name ("OY_E_IO") for a listed code, or NULL. [any-thread] */
static inline const char *oy_error_name(int32_t code) {
    switch (code) {
#define OY_ERROR_NAME_(name, value, text) case value: return #name;
        OY_ERROR_LIST(OY_ERROR_NAME_)
#undef OY_ERROR_NAME_
    default:
        return NULL;
    }
}

OY_EXTERN_C_END

#endif /* OYAKO_ERRORS_H */
