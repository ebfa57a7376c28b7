-- Prints a hyperfine JSON export as a table: mean, stddev, and the ratio to the first command.
local json = require "runbox.json"
local fs = require "runbox.fs"
local data = assert(json.decode(assert(fs.read(arg[1]))))
local base = data.results[1].mean
print("| command | mean (s) | ± (s) | ratio to first |")
print("|---|---|---|---|")
for _, r in ipairs(data.results) do
  print(("| `%s` | %.4f | %.4f | %.2fx |"):format(r.command, r.mean, r.stddev or 0, r.mean / base))
end
