local T = require "runbox.testing"
local sched = require "runbox.sched"
local errors = require "runbox.errors"

T.test("sleep orders tasks by deadline", function()
  local order = {}
  local a = sched.spawn(function() sched.sleep(0.05); order[#order + 1] = "a" end)
  local b = sched.spawn(function() sched.sleep(0.01); order[#order + 1] = "b" end)
  sched.wait_all{a, b}
  T.eq(order, {"b", "a"})
end)

T.test("sleeps run concurrently, not one after another", function()
  local t0 = sched.now()
  local ts = {}
  for i = 1, 50 do ts[i] = sched.spawn(sched.sleep, 0.1) end
  sched.wait_all(ts)
  T.ok(sched.now() - t0 < 0.5)
end)

T.test("wait gives results like pcall; join raises", function()
  local ok = sched.spawn(function(a, b) return a + b, "x" end, 1, 2)
  T.eq({ok:wait()}, {true, 3, "x"})
  local bad = sched.spawn(function() error("boom") end)
  local r, err = bad:wait()
  T.eq(r, false)
  T.match(err, "boom")
  T.raises("boom", bad.join, bad)
  T.match(bad.traceback, "test_sched.lua")
end)

T.test("cancel interrupts a parked task once; its cleanup may block", function()
  local log = {}
  local t = sched.spawn(function()
    local guard <close> = setmetatable({}, {__close = function()
      sched.sleep(0.01)            -- blocking inside cleanup works after cancellation
      log[#log + 1] = "cleaned"
    end})
    sched.sleep(10)
    log[#log + 1] = "not reached"
  end)
  sched.sleep(0.01)
  t:cancel("test")
  local ok, err = t:wait()
  T.eq(ok, false)
  T.ok(errors.is(err, "cancelled"))
  T.eq(log, {"cleaned"})
end)

T.test("cancel of a task that is not parked is delivered at its next blocking call", function()
  local reached = false
  local t = sched.spawn(function()
    for _ = 1, 1000 do end
    sched.current():cancel()
    reached = true
    sched.sleep(1)
  end)
  local ok, err = t:wait()
  T.ok(reached)
  T.eq(ok, false)
  T.ok(errors.is(err, "cancelled"))
end)

T.test("deadline raises timeout in the blocking call, then lets cleanup block", function()
  local cleaned = false
  local t0 = sched.now()
  local ok, err = pcall(sched.deadline, 0.05, function()
    local g <close> = setmetatable({}, {__close = function() sched.sleep(0.01); cleaned = true end})
    sched.sleep(5)
  end)
  T.eq(ok, false)
  T.ok(errors.is(err, "timeout"), tostring(err))
  T.ok(cleaned)
  T.ok(sched.now() - t0 < 1)
end)

T.test("timeout returns values or nil, err", function()
  T.eq({sched.timeout(1, function() return 7 end)}, {true, 7})
  local ok, err = sched.timeout(0.01, sched.sleep, 1)
  T.eq(ok, nil)
  T.ok(errors.is(err, "timeout"))
end)

T.test("timeout does not swallow an enclosing deadline", function()
  local outer_scope_err
  local ok, err = pcall(sched.deadline, 0.02, function()
    local r, e = sched.timeout(5, sched.sleep, 1)   -- the outer deadline fires in here
    outer_scope_err = {r, e}
  end)
  T.eq(ok, false)
  T.ok(errors.is(err, "timeout"))
  T.eq(outer_scope_err, nil, "sched.timeout must not return for a deadline that is not its own")
end)

T.test("an expired inner deadline does not leak into the outer scope", function()
  local r = sched.deadline(1, function()
    local ok = sched.timeout(0.01, sched.sleep, 1)
    T.eq(ok, nil)
    sched.sleep(0.05)   -- must not raise: the inner deadline is gone
    return "after"
  end)
  T.eq(r, "after")
end)

T.test("a deadline that fires while the task is busy is raised at the next blocking call", function()
  local ok, err = pcall(sched.deadline, 0.01, function()
    local t0 = sched.now()
    while sched.now() - t0 < 0.05 do end   -- busy, no blocking call
    sched.yield()
  end)
  T.eq(ok, false)
  T.ok(errors.is(err, "timeout"))
end)

T.test("semaphore bounds concurrency", function()
  local sem = sched.semaphore(3)
  local inside, most = 0, 0
  local ts = {}
  for i = 1, 20 do
    ts[i] = sched.spawn(function()
      sem:with(function()
        inside = inside + 1
        most = math.max(most, inside)
        sched.sleep(0.01)
        inside = inside - 1
      end)
    end)
  end
  sched.wait_all(ts)
  T.eq(most, 3)
  T.eq(sem.free, 3)
end)

T.test("a task cancelled while queued on a semaphore does not lose a permit", function()
  local sem = sched.semaphore(1)
  sem:acquire()
  local waiter = sched.spawn(function() sem:acquire() end)
  sched.sleep(0.01)
  waiter:cancel()
  waiter:wait()
  sem:release()
  T.eq(sem.free, 1)
end)

T.test("token bucket paces takers", function()
  local b = sched.token_bucket(50, 1)
  local t0 = sched.now()
  for _ = 1, 11 do b:take() end
  local dt = sched.now() - t0
  T.ok(dt >= 0.18 and dt < 1, "took " .. dt)
end)

T.test("event wakes every waiter", function()
  local ev = sched.event()
  local n = 0
  local ts = {}
  for i = 1, 5 do ts[i] = sched.spawn(function() ev:wait(); n = n + 1 end) end
  sched.sleep(0.01)
  T.eq(n, 0)
  ev:set()
  sched.wait_all(ts)
  T.eq(n, 5)
end)

T.test("wait_any returns the first task to finish", function()
  local slow = sched.spawn(sched.sleep, 0.2)
  local fast = sched.spawn(function() sched.sleep(0.01); return "fast" end)
  T.ok(sched.wait_any{slow, fast} == fast)
  slow:cancel()
end)

T.test("scope waits for its tasks and cancels the rest when one fails", function()
  local finished = {}
  local ok, err = pcall(sched.scope, function(s)
    s:spawn(function() sched.sleep(5); finished.slow = true end)
    s:spawn(function() sched.sleep(0.01); error("task failed") end)
    s:spawn(function() sched.sleep(0.005); finished.quick = true end)
  end)
  T.eq(ok, false)
  T.match(err, "task failed")
  T.eq(finished, {quick = true})
end)

T.test("blocking calls work inside coroutine.wrap iterators", function()
  local gen = coroutine.wrap(function()
    for i = 1, 3 do sched.sleep(0.001); coroutine.yield(i) end
  end)
  T.eq({gen(), gen(), gen()}, {1, 2, 3})
end)

T.test("coroutine.yield straight from a task is an error, not a hang", function()
  local t = sched.spawn(function() coroutine.yield(1) end)
  local ok, err = t:wait()
  T.eq(ok, false)
  T.match(errors.message(err), "coroutine.yield")
end)

T.test("a cancel delivered at sched.yield leaves no stale wake-up behind", function()
  local slept
  local t = sched.spawn(function()
    sched.current():cancel()
    pcall(sched.yield)                 -- raises the pending cancel
    local t0 = sched.now()
    sched.sleep(0.05)                  -- must not be woken by yield's queued wake-up
    slept = sched.now() - t0
  end)
  t:wait()
  T.ok(slept and slept >= 0.04, "sleep after a cancelled yield returned after " .. tostring(slept))
end)

T.test("a deadline firing after a cancel does not swallow the cancel", function()
  local ev = sched.event()
  local after
  local t = sched.spawn(function()
    sched.timeout(0.02, function() ev:wait() end)
    after = "continued"
    sched.sleep(0.01)
    after = "never cancelled"
  end)
  sched.spawn(function()
    local t0 = sched.now()
    while sched.now() - t0 < 0.04 do end   -- the deadline expires while nobody polls
    ev:set()                                 -- t is ready ...
    t:cancel("test")                         -- ... and then cancelled, before the deadline is seen
  end)
  local ok, err = t:wait()
  T.eq(ok, false, "task result (after = " .. tostring(after) .. ")")
  T.ok(errors.is(err, "cancelled"), tostring(err))
end)

T.test("a cancelled scope cancels and waits for its tasks", function()
  local done_child
  local child
  local t = sched.spawn(function()
    sched.scope(function(s)
      child = s:spawn(function()
        local guard <close> = setmetatable({}, {__close = function() done_child = "cleaned" end})
        sched.sleep(5)
      end)
    end)
  end)
  sched.sleep(0.01)
  t:cancel("test")
  local ok, err = t:wait()
  T.eq(ok, false)
  T.ok(errors.is(err, "cancelled"), tostring(err))
  T.eq(child.status, "done", "the scope's task outlived the scope")
  T.eq(done_child, "cleaned")
end)

T.test("shielded: a cancellation or deadline waits until the shielded wait is over", function()
  local ev = sched.event()
  local steps = {}
  local t = sched.spawn(function()
    sched.shielded(function() ev:wait() end)
    steps[#steps + 1] = "waited"
    sched.sleep(5)                       -- the held-back cancellation arrives here
    steps[#steps + 1] = "slept"
  end)
  sched.sleep(0.01)
  t:cancel("test")
  sched.sleep(0.01)
  T.eq(t.status, "parked", "the shielded wait was interrupted")
  ev:set()
  local ok, err = t:wait()
  T.eq(ok, false)
  T.ok(errors.is(err, "cancelled"), tostring(err))
  T.eq(steps, {"waited"})
  -- a deadline too; an error inside still propagates
  local ev2 = sched.event()
  sched.spawn(function() sched.sleep(0.05); ev2:set() end)
  local ok2, err2 = sched.timeout(0.01, function()
    sched.shielded(function() ev2:wait() end)
    sched.sleep(1)                       -- the held-back timeout arrives here
    return "not reached"
  end)
  T.eq(ok2, nil)
  T.ok(errors.is(err2, "timeout"), tostring(err2))
  T.ok(ev2.is_set, "the wait went on past the deadline")
  T.eq(select(2, pcall(sched.shielded, function() error("inner", 0) end)), "inner")
end)

T.run()
