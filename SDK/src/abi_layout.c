/* Compiles every SDK header into the host, so the _Static_assert layout locks
 * are checked on every build of Oyako itself. */
#include <oyako/oyako.h>
