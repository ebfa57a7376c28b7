/* libFuzzer target for runbox.json: decode must return a value or nil, err (never raise); what
 * decodes must encode, and encoding, decoding and encoding again must give the same text (also
 * through the pretty form). */
#include "lua_target.h"

static const char *setup =
    "local json = require 'runbox.json'\n"
    "return function(data)\n"
    "  local v, err = json.decode(data)\n"
    "  if v == nil then assert(err ~= nil and err.line and err.column, 'decode failed without an error'); return end\n"
    "  local ok, text = pcall(json.encode, v)\n"
    "  if not ok then assert(tostring(text):find('infinity'), text); return end\n"
    "  local again, e2 = json.decode(text)\n"
    "  assert(e2 == nil, e2)\n"
    "  local text2 = json.encode(again)\n"
    "  local p, e3 = json.decode(json.pretty(again))\n"
    "  assert(e3 == nil, e3)\n"
    "  assert(json.encode(p) == text2, 'pretty round trip differs')\n"
    "  assert(json.encode(json.decode(text2)) == text2, 'encode(decode(t)) is not stable')\n"
    /* with invalid UTF-8 in keys two keys may become one; otherwise nothing may change */
    "  if utf8.len(data) then assert(text2 == text, 'encode(decode(encode(x))) differs') end\n"
    "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    return fuzz_lua_call("fuzz_json", setup, data, size);
}
