# Compiler and linker flags for Oyako drivers: the one place they are defined.
# Read by make (include this file and set SDK) and by `oyako driver build`,
# which substitutes $(SDK) itself.
OY_CFLAGS = -std=c11 -O2 -g -fPIC -fvisibility=hidden -Wall -Wextra -pedantic -I$(SDK)/include
OY_LDFLAGS = -shared -Wl,-z,defs -Wl,-z,noexecstack -Wl,-z,relro -Wl,-z,now -Wl,--version-script=$(SDK)/oyako-driver.map
