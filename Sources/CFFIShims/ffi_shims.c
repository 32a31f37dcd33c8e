#include "CFFIShims.h"

#include <ffi.h>

static ffi_type *kind_type(int kind) {
    switch (kind) {
    case OY_FFI_VOID: return &ffi_type_void;
    case OY_FFI_BOOL: return &ffi_type_uint8;
    case OY_FFI_I8: return &ffi_type_sint8;
    case OY_FFI_I16: return &ffi_type_sint16;
    case OY_FFI_I32: return &ffi_type_sint32;
    case OY_FFI_I64: return &ffi_type_sint64;
    case OY_FFI_U8: return &ffi_type_uint8;
    case OY_FFI_U16: return &ffi_type_uint16;
    case OY_FFI_U32: return &ffi_type_uint32;
    case OY_FFI_U64: return &ffi_type_uint64;
    case OY_FFI_F32: return &ffi_type_float;
    case OY_FFI_F64: return &ffi_type_double;
    case OY_FFI_POINTER: return &ffi_type_pointer;
    default: return 0;
    }
}

int oy_ffi_invoke(void (*fn)(void), int return_kind, unsigned count, const int *argument_kinds, void **values, void *result) {
    ffi_cif cif;
    ffi_type *types[32];
    ffi_type *rtype = kind_type(return_kind);
    unsigned i;
    if (fn == 0 || rtype == 0 || count > 32) return -1;
    for (i = 0; i < count; i++) {
        types[i] = kind_type(argument_kinds[i]);
        if (types[i] == 0 || types[i] == &ffi_type_void) return -1;
    }
    if (ffi_prep_cif(&cif, FFI_DEFAULT_ABI, count, rtype, types) != FFI_OK) return -1;
    ffi_call(&cif, fn, result, values);
    return 0;
}
