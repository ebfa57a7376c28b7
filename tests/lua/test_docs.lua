-- Every ```lua block in docs/ runs as written (blocks marked ```lua norun are skipped), so the
-- API reference never shows an example that does not work.
local T = require "runbox.testing"
local proc = require "runbox.proc"

local BIN = T.runbox_bin()   -- absolute: examples run in /tmp
local SRC = os.getenv("RUNBOX_SOURCE") or "."

local function blocks(path)
  local out, cur, start = {}, nil, 0
  local n = 0
  for line in io.lines(path) do
    n = n + 1
    if cur then
      if line:match("^```%s*$") then
        out[#out + 1] = {code = table.concat(cur, "\n"), line = start}
        cur = nil
      else
        cur[#cur + 1] = line
      end
    elseif line:match("^```lua%s*$") then
      cur, start = {}, n
    end
  end
  return out
end

local files = {}
for f in io.popen("find " .. SRC .. "/docs -name '*.md' | sort"):lines() do files[#files + 1] = f end

for _, file in ipairs(files) do
  for _, b in ipairs(blocks(file)) do
    local name = ("%s:%d"):format(file:gsub("^" .. SRC:gsub("%p", "%%%0") .. "/", ""), b.line)
    T.test(name, function()
      local r = proc.run{BIN, "-e", b.code, cwd = "/tmp", timeout = 60}
      if r.code ~= 0 then
        error(("example failed with status %d:\n%s%s"):format(r.code, r.stdout, r.stderr), 0)
      end
    end)
  end
end

T.run()
