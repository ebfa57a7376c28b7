-- `local rb = require "runbox"` gives every module on first use: rb.proc, rb.http, rb.sched, ...
return setmetatable({}, {__index = function(t, name)
  local m = require("runbox." .. name)
  rawset(t, name, m)
  return m
end})
