local T = require "runbox.testing"
local sched = require "runbox.sched"

T.test("sleep orders tasks by deadline", function()
  local order = {}
  local a = sched.spawn(function() sched.sleep(0.05); order[#order + 1] = "a" end)
  local b = sched.spawn(function() sched.sleep(0.01); order[#order + 1] = "b" end)
  sched.wait_all{a, b}
  T.eq(order, {"b", "a"})
end)

T.run()
