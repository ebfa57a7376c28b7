/* The nghttp2 functions engine/h2.c calls, forwarded to libnghttp2 loaded on first use (see
 * lazy.h), so runs that make no gRPC call pay nothing for it. */
#include "h2.h"
#include "lazy.h"

#include <dlfcn.h>
#include <nghttp2/nghttp2.h>

typedef nghttp2_session_callbacks cbs;

#define NGHTTP2_FUNCS(X, V) \
    X(int, nghttp2_session_callbacks_new, NGHTTP2_ERR_NOMEM, (cbs **c), (c)) \
    V(nghttp2_session_callbacks_del, (cbs *c), (c)) \
    V(nghttp2_session_callbacks_set_on_frame_recv_callback, (cbs *c, nghttp2_on_frame_recv_callback f), (c, f)) \
    V(nghttp2_session_callbacks_set_on_frame_send_callback, (cbs *c, nghttp2_on_frame_send_callback f), (c, f)) \
    V(nghttp2_session_callbacks_set_on_frame_not_send_callback, (cbs *c, nghttp2_on_frame_not_send_callback f), (c, f)) \
    V(nghttp2_session_callbacks_set_on_data_chunk_recv_callback, (cbs *c, nghttp2_on_data_chunk_recv_callback f), (c, f)) \
    V(nghttp2_session_callbacks_set_on_stream_close_callback, (cbs *c, nghttp2_on_stream_close_callback f), (c, f)) \
    V(nghttp2_session_callbacks_set_on_begin_headers_callback, (cbs *c, nghttp2_on_begin_headers_callback f), (c, f)) \
    V(nghttp2_session_callbacks_set_on_header_callback, (cbs *c, nghttp2_on_header_callback f), (c, f)) \
    X(int, nghttp2_option_new, NGHTTP2_ERR_NOMEM, (nghttp2_option **o), (o)) \
    V(nghttp2_option_del, (nghttp2_option *o), (o)) \
    V(nghttp2_option_set_no_auto_window_update, (nghttp2_option *o, int v), (o, v)) \
    V(nghttp2_option_set_peer_max_concurrent_streams, (nghttp2_option *o, uint32_t v), (o, v)) \
    X(int, nghttp2_session_client_new2, NGHTTP2_ERR_NOMEM, \
      (nghttp2_session **s, const cbs *c, void *ud, const nghttp2_option *o), (s, c, ud, o)) \
    V(nghttp2_session_del, (nghttp2_session *s), (s)) \
    X(int, nghttp2_submit_settings, NGHTTP2_ERR_NOMEM, \
      (nghttp2_session *s, uint8_t f, const nghttp2_settings_entry *iv, size_t n), (s, f, iv, n)) \
    X(int, nghttp2_session_set_local_window_size, NGHTTP2_ERR_NOMEM, \
      (nghttp2_session *s, uint8_t f, int32_t id, int32_t size), (s, f, id, size)) \
    X(int32_t, nghttp2_submit_request, NGHTTP2_ERR_NOMEM, \
      (nghttp2_session *s, const nghttp2_priority_spec *p, const nghttp2_nv *nva, size_t n, \
       const nghttp2_data_provider *d, void *ud), (s, p, nva, n, d, ud)) \
    X(ssize_t, nghttp2_session_mem_send, NGHTTP2_ERR_NOMEM, (nghttp2_session *s, const uint8_t **d), (s, d)) \
    X(ssize_t, nghttp2_session_mem_recv, NGHTTP2_ERR_NOMEM, \
      (nghttp2_session *s, const uint8_t *in, size_t n), (s, in, n)) \
    X(int, nghttp2_session_want_read, 0, (nghttp2_session *s), (s)) \
    X(int, nghttp2_session_want_write, 0, (nghttp2_session *s), (s)) \
    X(void *, nghttp2_session_get_stream_user_data, NULL, (nghttp2_session *s, int32_t id), (s, id)) \
    X(int, nghttp2_session_set_stream_user_data, NGHTTP2_ERR_INVALID_ARGUMENT, \
      (nghttp2_session *s, int32_t id, void *ud), (s, id, ud)) \
    X(int, nghttp2_session_consume, NGHTTP2_ERR_NOMEM, (nghttp2_session *s, int32_t id, size_t n), (s, id, n)) \
    X(int, nghttp2_session_resume_data, NGHTTP2_ERR_INVALID_ARGUMENT, (nghttp2_session *s, int32_t id), (s, id)) \
    X(int, nghttp2_submit_rst_stream, NGHTTP2_ERR_NOMEM, \
      (nghttp2_session *s, uint8_t f, int32_t id, uint32_t code), (s, f, id, code)) \
    X(int, nghttp2_submit_ping, NGHTTP2_ERR_NOMEM, (nghttp2_session *s, uint8_t f, const uint8_t *d), (s, f, d)) \
    X(int, nghttp2_session_terminate_session, NGHTTP2_ERR_NOMEM, (nghttp2_session *s, uint32_t code), (s, code)) \
    X(uint32_t, nghttp2_session_get_remote_settings, 0, (nghttp2_session *s, nghttp2_settings_id id), (s, id)) \
    X(const char *, nghttp2_strerror, "nghttp2 not loaded", (int e), (e)) \
    X(const char *, nghttp2_http2_strerror, "nghttp2 not loaded", (uint32_t e), (e)) \
    X(nghttp2_info *, nghttp2_version, NULL, (int least), (least))

#define NGHTTP2_VARIADIC(Y)

RB_LAZY_LIBRARY(rb_lazy_nghttp2_load, "libnghttp2", "RUNBOX_LIBNGHTTP2", "libnghttp2-14", NGHTTP2_FUNCS,
                NGHTTP2_VARIADIC, "libnghttp2.so.14", "libnghttp2.so")
