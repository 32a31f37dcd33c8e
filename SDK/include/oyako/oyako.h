/*
 * oyako/oyako.h — the whole Oyako driver SDK, ABI version 1.
 * Include this, or the individual headers, from a driver.
 */
#ifndef OYAKO_OYAKO_H
#define OYAKO_OYAKO_H

#include <oyako/types.h>
#include <oyako/errors.h>
#include <oyako/host.h>
#include <oyako/driver.h>
#include <oyako/block.h>
#include <oyako/net.h>
#include <oyako/serial.h>
#include <oyako/rng.h>
#include <oyako/control.h>
#include <oyako/instances.h>

#endif /* OYAKO_OYAKO_H */
