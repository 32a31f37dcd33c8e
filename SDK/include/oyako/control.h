/*
 * oyako/control.h — control methods, extension ID "oyako.control/1".
 *
 * A driver may publish typed management methods (the analogue of IOCTLs or
 * WMI methods): `get_extension(instance, OY_CONTROL_EXTENSION)` returns an
 * oy_control_table. The host calls a method through libffi after checking
 * the caller's arguments against the declared signature, so a wrong count or
 * type is refused before any driver code runs (`oyako driver call`).
 *
 * Signature notation: RET(ARG,ARG,...) with no spaces, e.g. "u32()",
 * "i32(u32,bool)", "str()". Types:
 *   void          return only
 *   bool          C bool (_Bool)
 *   i8 i16 i32 i64 u8 u16 u32 u64   fixed-width integers
 *   f32 f64       float, double
 *   str           argument: const char *, NUL-terminated, borrowed for the
 *                 call; return: a string the driver owns, valid until the
 *                 next call on the same instance
 * The C function takes the instance first: RET fn(void *instance, ARG...).
 * Methods are called in [passive] context, one at a time per instance.
 */
#ifndef OYAKO_CONTROL_H
#define OYAKO_CONTROL_H

#include <oyako/types.h>

OY_EXTERN_C_BEGIN

#define OY_CONTROL_EXTENSION "oyako.control/1"

typedef void (*oy_control_fn)(void);

typedef struct oy_control_method {
    uint32_t struct_size;
    uint32_t reserved;
    const char *name;         /* static, [a-z0-9_]+ */
    const char *signature;    /* static, in the notation above */
    const char *description;  /* static, one line */
    oy_control_fn function;   /* the real type is given by `signature` */
} oy_control_method;

OY_STATIC_ASSERT(sizeof(oy_control_method) == 40, "oy_control_method v1 size");

typedef struct oy_control_table {
    uint32_t struct_size;
    uint32_t method_count;
    const oy_control_method *methods;  /* static array of method_count */
} oy_control_table;

OY_STATIC_ASSERT(sizeof(oy_control_table) == 16, "oy_control_table v1 size");

OY_EXTERN_C_END

#endif /* OYAKO_CONTROL_H */
