-- Prints a hyperfine JSON export as a table: mean, stddev, and the ratio to the first command.
local json = require "runbox.json"
local fs = require "runbox.fs"
local data = assert(json.decode(assert(fs.read(arg[1]))))
local base = data.results[1].mean
print("| command | mean (s) | ± (s) | ratio to first |")
print("|---|---|---|---|")
for _, r in ipairs(data.results) do
  local sd = type(r.stddev) == "number" and r.stddev or 0   -- null for a single run
  print(("| `%s` | %.4f | %.4f | %.2fx |"):format(r.command, r.mean, sd, r.mean / base))
end
