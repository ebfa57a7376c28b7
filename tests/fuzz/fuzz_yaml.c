/* libFuzzer target for runbox.yaml: decode_all must return a list or nil, err (never raise), and
 * whatever decodes must go through json.encode (so no cycles, no wild values) unless it holds
 * NaN or infinity. */
#include "lua_target.h"

static const char *setup =
    "local yaml, json = require 'runbox.yaml', require 'runbox.json'\n"
    "return function(data)\n"
    "  local v, err = yaml.decode_all(data)\n"
    "  if v == nil then assert(err ~= nil and err.code == 'yaml', 'decode failed without an error'); return end\n"
    "  if #data > 2000 then return end\n"
    "  local ok, e = pcall(json.encode, v)\n"
    "  if not ok then assert(tostring(e):find('NaN') or tostring(e):find('infinity') or tostring(e):find('table key'), e) end\n"
    "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    return fuzz_lua_call("fuzz_yaml", setup, data, size);
}
