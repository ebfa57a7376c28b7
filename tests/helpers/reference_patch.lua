-- A shell line that applies an example task's reference solution, for test agents that should
-- score 100% (a `cmd:` agent, a stand-in model's shell step). The sandbox has no copy of the
-- reference diff (runbox keeps it from the agent), so the line carries the patches itself, in
-- base64: each is tried in turn and the one that fits the repository applies (git apply changes
-- nothing when a patch does not apply).
--
--   local apply = dofile(SRC .. "/tests/helpers/reference_patch.lua")
--   apply(EXAMPLES .. "/fix-median-bug")            -- that task's patch
--   apply(EXAMPLES)                                  -- every example task's patch
local fs = require "runbox.fs"
local util = require "runbox.util"

return function(dir)
  local dirs = {dir}
  if not fs.exists(dir .. "/diff.patch") and not fs.exists(dir .. "/overlay_files/diff.patch") then
    dirs = {}
    for _, name in ipairs(assert(fs.list(dir))) do dirs[#dirs + 1] = dir .. "/" .. name end
    table.sort(dirs)
  end
  local b64 = {}
  for _, d in ipairs(dirs) do
    local patch = fs.read(d .. "/diff.patch") or fs.read(d .. "/overlay_files/diff.patch")
    if patch then b64[#b64 + 1] = util.base64_encode(patch) end
  end
  assert(#b64 > 0, "no diff.patch under " .. dir)
  return ("for p in %s; do printf %%s $p | base64 -d | git apply --whitespace=nowarn 2>/dev/null && break; done")
         :format(table.concat(b64, " "))
end
