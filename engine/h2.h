/* runbox.c.h2: HTTP/2 client connections and streams on nghttp2 (and OpenSSL for TLS), driven by
 * the engine loop. The Lua layer is lua/runbox/h2.lua; runbox.grpc is its main user. */
#ifndef RUNBOX_H2_H
#define RUNBOX_H2_H
#include <stddef.h>
#include <lua.h>

/* Lazy loaders of the two libraries (see lazy.h): 0, or -1 with a message for the user in err. */
int rb_lazy_nghttp2_load(char *err, size_t n);
int rb_lazy_ssl_load(char *err, size_t n);

int luaopen_runbox_c_h2(lua_State *L);

#endif
