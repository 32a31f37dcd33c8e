/// Symbols a driver may import from the system: pure computation only.
/// Anything that reaches the environment (threads, files, sockets, clocks,
/// environment variables, signals, dynamic loading) must go through the host
/// table, so a driver that imports it is not portable between environments.
public enum ImportAllowlist {
    public static let libc: Set<String> = [
        // memory and strings
        "memcpy", "memmove", "memset", "memcmp", "memchr", "strlen", "strnlen", "strcmp", "strncmp", "strchr", "strrchr",
        "strstr", "strcpy", "strncpy", "strcat", "strncat", "strspn", "strcspn", "strpbrk",
        // formatting into caller memory
        "snprintf", "vsnprintf", "sprintf", "vsprintf",
        // pure computation
        "abs", "labs", "llabs", "qsort", "bsearch", "strtol", "strtoul", "strtoll", "strtoull",
        // the compiler's runtime support
        "__stack_chk_fail", "__memcpy_chk", "__memset_chk", "__snprintf_chk", "__vsnprintf_chk", "__strcpy_chk",
        // weak references every shared object's start files carry
        "__cxa_finalize", "__gmon_start__", "_ITM_registerTMCloneTable", "_ITM_deregisterTMCloneTable",
        // Embedded Swift's runtime allocates class instances and boxes with
        // these; documented as allowed so Swift drivers qualify (SDK/README.md)
        "posix_memalign", "free",
    ]

    public static let libm: Set<String> = [
        "sqrt", "sqrtf", "floor", "floorf", "ceil", "ceilf", "fabs", "fabsf", "fmod", "fmodf", "log2", "exp2", "pow", "round", "roundf",
    ]

    public static let libraries: Set<String> = ["libc.so.6", "libm.so.6"]

    public static func allows(_ symbol: String) -> Bool { libc.contains(symbol) || libm.contains(symbol) }
}
