/* libffi behind a tiny C door: Swift never touches libffi's global
 * ffi_type_* objects (not concurrency-safe in Swift 6) nor its structs. */
#ifndef CFFISHIMS_H
#define CFFISHIMS_H

enum oy_ffi_kind {
    OY_FFI_VOID = 0,
    OY_FFI_BOOL, OY_FFI_I8, OY_FFI_I16, OY_FFI_I32, OY_FFI_I64,
    OY_FFI_U8, OY_FFI_U16, OY_FFI_U32, OY_FFI_U64,
    OY_FFI_F32, OY_FFI_F64, OY_FFI_POINTER
};

/* Calls fn(values...) with the given argument and return kinds through
 * libffi. `result` must hold 8 bytes (libffi widens small integer returns to
 * a full register). Returns 0, or -1 when libffi cannot describe the call. */
int oy_ffi_invoke(void (*fn)(void), int return_kind, unsigned count, const int *argument_kinds, void **values, void *result);

#endif
