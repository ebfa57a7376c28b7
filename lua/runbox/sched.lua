-- The scheduler: every unit of work is a task (a coroutine). Blocking-looking calls park the
-- running task on an id of the C event loop (an fd becoming ready, a timer, an HTTP transfer) or
-- on a Lua-side event, and the loop resumes it when that id is ready.
--
-- Cancellation and deadlines are delivered once, as an error raised at the task's next blocking
-- call; cleanup code (to-be-closed variables, code after a pcall) may then block again normally.
local loop = require "runbox.c.loop"
local errors = require "runbox.errors"

local M = {}

local PARK = setmetatable({}, {__tostring = function() return "runbox scheduler yield" end})
local co_create, co_resume, co_yield, co_status = coroutine.create, coroutine.resume, coroutine.yield, coroutine.status
local pack, unpack = table.pack, table.unpack

local current            -- the running task
local runq = {}          -- tasks to resume: {task, why, value}
local by_id = {}         -- loop id -> parked task
local deadline_of = {}   -- timer id -> {task, scope}
local live = {}          -- every unfinished task
local nlive = 0
local exit_request       -- set by os.exit or a signal: {status=, signal=}
local signals_seen = 0
local failed = {}        -- tasks that failed; reported if nothing ever waited for them
local poll_ids = {}
local cancel_all_hooks = {}

local Task = {}
Task.__index = Task
Task.__tostring = function(t) return "task " .. (t.name or tostring(t.num)) end
local task_count = 0

M.now = loop.now

-- Schedules t to resume with (why, value) if it is parked.
local function wake(t, why, value)
  if t.status ~= "parked" then return false end
  t.status = "ready"
  runq[#runq + 1] = {t, why, value}
  return true
end

-- Interrupts t with err (cancellation or timeout): at once if parked, else at its next park.
local function interrupt(t, err)
  if t.status == "done" then return end
  if t.shielded == 0 and wake(t, "interrupt", err) then return end
  -- a pending cancellation wins over a later timeout, which a caller's timeout() would swallow
  if not (t.pending and errors.is(t.pending, "cancelled")) then t.pending = err end
end

-- Parks the running task until something wakes it. detach() unhooks it from what it waited on
-- when it is interrupted instead. Returns the value given by the waker.
local function park(detach)
  local t = current
  if not t then error("a blocking call needs a task: run it inside runbox (sched.run)", 3) end
  if t.pending and t.shielded == 0 then
    local err = t.pending
    t.pending = nil
    if detach then detach() end
    error(err, 0)
  end
  if t.status == "running" then t.status = "parked" end
  local why, value = co_yield(PARK)
  if why ~= "interrupt" and t.pending and t.shielded == 0 then   -- interrupted while already woken: deliver it now
    why, value = "interrupt", t.pending
    t.pending = nil
  end
  if why == "interrupt" then
    if detach then detach() end
    error(value, 0)
  end
  return value
end

-- Coroutines made by user code pass scheduler yields through to the scheduler, so a blocking call
-- inside an iterator built with coroutine.wrap still works.
local function relay(co, ok, ...)
  if ok and ... == PARK then
    return relay(co, co_resume(co, co_yield(PARK)))
  end
  return ok, ...
end
coroutine.resume = function(co, ...) return relay(co, co_resume(co, ...)) end
coroutine.wrap = function(fn)
  local co = co_create(fn)
  return function(...)
    local r = pack(relay(co, co_resume(co, ...)))
    if not r[1] then error(r[2], 0) end
    return unpack(r, 2, r.n)
  end
end

---------------------------------------------------------------------------------------------------
-- waiting on loop ids

-- Parks until the loop notifies id.
function M.wait_id(id)
  local t = current
  by_id[id] = t
  return park(function() by_id[id] = nil end)
end

-- Parks until fd is readable (dir "r") or writable ("w"), or has an error or hang-up.
function M.wait_fd(fd, dir)
  local id, err = loop.watch(fd, dir)
  if not id then errors.raise("io", "cannot wait on fd " .. fd .. ": " .. err) end
  by_id[id] = current
  park(function() by_id[id] = nil; loop.unwatch(fd, dir, id) end)
end

function M.sleep(seconds)
  local id, slot = loop.timer(seconds or 0)
  by_id[id] = current
  park(function() by_id[id] = nil; loop.timer_stop(id, slot) end)
end

-- Lets every other ready task run once.
function M.yield()
  local t = current
  if not t then error("sched.yield needs a task", 2) end
  if t.pending and t.shielded == 0 then park() end   -- raises it now: a queued wake-up would outlive the error
  t.status = "parked"
  wake(t, "wake")
  park()
end

-- Cancels every unfinished task (a signal, os.exit, shutdown) and runs the at_cancel_all hooks.
local function cancel_all(reason)
  for t in pairs(live) do t:cancel(reason) end
  for _, fn in ipairs(cancel_all_hooks) do fn(reason) end
end

-- fn(reason) runs whenever every task is cancelled at once: for what lives outside tasks (the
-- processes, which the C side watches).
function M.at_cancel_all(fn) cancel_all_hooks[#cancel_all_hooks + 1] = fn end

---------------------------------------------------------------------------------------------------
-- tasks

local function finish(t, ok, ...)
  t.status = "done"
  t.result = pack(ok, ...)
  live[t] = nil
  nlive = nlive - 1
  if not ok then
    local err = ...
    if not errors.is(err, "cancelled") and not errors.is(err, "exit") then
      failed[#failed + 1] = t
      if #failed > 1000 then M.report_unobserved() end   -- a long-lived server must not hoard them
    end
    if errors.is(err, "exit") and not exit_request then
      exit_request = {status = err.status}
      cancel_all("exit requested")
    end
  end
  for _, j in ipairs(t.joiners) do wake(j, "wake") end
  t.joiners = {}
  local s = t.owner        -- the scope it was spawned in hears of it without scanning its tasks
  if s then
    s.ended[#s.ended + 1] = t
    s.open = s.open - 1
    if s.waiter then wake(s.waiter, "wake") end
  end
end

local function trace(err)
  if current and not current.traceback then
    current.traceback = debug.traceback(errors.message(err), 2)
  end
  return err
end

-- Starts fn(...) as a new task; returns the task. t:wait() gives its results.
function M.spawn(fn, ...)
  task_count = task_count + 1
  local t = setmetatable({num = task_count, status = "ready", joiners = {}, shielded = 0}, Task)
  local args = pack(...)
  t.co = co_create(function()
    return finish(t, xpcall(fn, trace, unpack(args, 1, args.n)))
  end)
  live[t] = true
  nlive = nlive + 1
  runq[#runq + 1] = {t, "start"}
  return t
end

function M.current() return current end

-- Waits for the task to end; returns true, results... or false, err (like pcall).
function Task:wait()
  while self.status ~= "done" do
    local me = current
    local j = self.joiners
    j[#j + 1] = me
    park(function()
      for i = #j, 1, -1 do if j[i] == me then table.remove(j, i) end end
    end)
  end
  self.retrieved = true
  return unpack(self.result, 1, self.result.n)
end

-- Waits for the task and returns its results, raising its error if it failed.
function Task:join()
  local r = pack(self:wait())
  if not r[1] then error(r[2], 0) end
  return unpack(r, 2, r.n)
end

function Task:done() return self.status == "done" end

-- Cancels the task: it gets a "cancelled" error at its current or next blocking call, once.
function Task:cancel(reason)
  if self.status == "done" or self.cancelled then return end
  self.cancelled = true
  interrupt(self, errors.new("cancelled", reason or "cancelled"))
end

-- Waits for every task; returns a list of {ok, results...} packs in the same order.
function M.wait_all(tasks)
  local out = {}
  for i, t in ipairs(tasks) do out[i] = pack(t:wait()) end
  return out
end

-- Waits until one of the tasks ends; returns that task.
function M.wait_any(tasks)
  while true do
    for _, t in ipairs(tasks) do if t.status == "done" then return t end end
    local me = current
    for _, t in ipairs(tasks) do t.joiners[#t.joiners + 1] = me end
    local function detach()
      for _, t in ipairs(tasks) do
        for i = #t.joiners, 1, -1 do if t.joiners[i] == me then table.remove(t.joiners, i) end end
      end
    end
    park(detach)
    detach()
  end
end

---------------------------------------------------------------------------------------------------
-- deadlines

local function run_with_deadline(scope, fn, ...)
  local t = current
  if not t then error("sched.deadline needs a task", 3) end
  local id, slot = loop.timer(scope.seconds)
  deadline_of[id] = {t, scope}
  local guard <close> = setmetatable({}, {__close = function()
    loop.timer_stop(id, slot)
    deadline_of[id] = nil
    if t.pending and t.pending.scope == scope then t.pending = nil end
  end})
  return fn(...)
end

-- Runs fn(...); if it has not returned after `seconds`, the blocking call it is in raises a
-- "timeout" error (once). Returns fn's results.
function M.deadline(seconds, fn, ...)
  return run_with_deadline({seconds = seconds}, fn, ...)
end

-- Runs fn(...) under a deadline; returns true, results... or nil, err when this deadline fired.
-- Other errors, including an enclosing deadline's timeout, propagate.
function M.timeout(seconds, fn, ...)
  local scope = {seconds = seconds}
  local r = pack(pcall(run_with_deadline, scope, fn, ...))
  if r[1] then return true, unpack(r, 2, r.n) end
  if errors.is(r[2], "timeout") and r[2].scope == scope then return nil, r[2] end
  error(r[2], 0)
end

-- Runs fn(...) with cancellation and deadlines held back: they reach the task at its first
-- blocking call after fn returns. For short waits that must complete (a journal's fsync).
function M.shielded(fn, ...)
  local t = current
  if not t then return fn(...) end
  t.shielded = t.shielded + 1
  local r = pack(pcall(fn, ...))
  t.shielded = t.shielded - 1
  if not r[1] then error(r[2], 0) end
  return unpack(r, 2, r.n)
end

---------------------------------------------------------------------------------------------------
-- synchronisation

local Event = {}
Event.__index = Event

-- An event: wait() parks until set() is called; stays set until clear().
function M.event() return setmetatable({is_set = false, waiters = {}}, Event) end

function Event:set()
  self.is_set = true
  local w = self.waiters
  self.waiters = {}
  for _, t in ipairs(w) do wake(t, "wake") end
end

function Event:clear() self.is_set = false end

function Event:wait()
  while not self.is_set do
    local me, w = current, self.waiters
    w[#w + 1] = me
    park(function() for i = #w, 1, -1 do if w[i] == me then table.remove(w, i) end end end)
  end
end

local Semaphore = {}
Semaphore.__index = Semaphore

-- A counting semaphore: at most n holders at once, served first come first served.
function M.semaphore(n)
  return setmetatable({free = n, queue = {}}, Semaphore)
end

function Semaphore:acquire()
  if self.free > 0 and #self.queue == 0 then self.free = self.free - 1; return end
  local me, q = current, self.queue
  local entry = {task = me}
  q[#q + 1] = entry
  park(function()
    for i = #q, 1, -1 do if q[i] == entry then table.remove(q, i) end end
    if entry.granted then self:release() end  -- handed over while being interrupted: pass it on
  end)
end

function Semaphore:release()
  local q = self.queue
  while #q > 0 do
    local entry = table.remove(q, 1)
    if entry.task.status == "parked" then
      entry.granted = true
      wake(entry.task, "wake")
      return
    end
  end
  self.free = self.free + 1
end

-- Runs fn(...) holding the semaphore; releases it however fn ends.
function Semaphore:with(fn, ...)
  self:acquire()
  local guard <close> = setmetatable({}, {__close = function() self:release() end})
  return fn(...)
end

local Bucket = {}
Bucket.__index = Bucket

-- A token bucket: take() returns at once while tokens remain, then paces callers at `rate` per
-- second (burst: how many may go at once after a quiet spell). Used for creation rate limits.
function M.token_bucket(rate, burst)
  burst = burst or 1
  return setmetatable({rate = rate, burst = burst, tokens = burst, stamp = loop.now()}, Bucket)
end

function Bucket:take()
  while true do
    local now = loop.now()
    self.tokens = math.min(self.burst, self.tokens + (now - self.stamp) * self.rate)
    self.stamp = now
    if self.tokens >= 1 then self.tokens = self.tokens - 1; return end
    M.sleep((1 - self.tokens) / self.rate)
  end
end

---------------------------------------------------------------------------------------------------
-- scopes: structured concurrency

local Scope = {}
Scope.__index = Scope

function Scope:spawn(fn, ...)
  local t = M.spawn(fn, ...)
  t.owner = self
  self.tasks[#self.tasks + 1] = t
  self.open = self.open + 1
  return t
end

function Scope:cancel(reason)
  for _, t in ipairs(self.tasks) do t:cancel(reason) end
end

-- Runs fn(scope). Tasks started with scope:spawn belong to the scope: when fn returns, the scope
-- waits for them; when fn fails (or one of them fails), the others are cancelled, and the first
-- error is raised after all have ended.
-- Each ending task is looked at once (its error noted), so a scope of n tasks costs O(n).
function M.scope(fn, ...)
  local s = setmetatable({tasks = {}, open = 0, ended = {}}, Scope)
  local r = pack(pcall(fn, s, ...))
  local first_err = not r[1] and r[2] or nil
  if first_err then s:cancel("scope failed") end
  local function detach() s.waiter = nil end
  while true do
    local ended = s.ended
    if #ended > 0 then
      s.ended = {}
      for _, t in ipairs(ended) do
        if not t.retrieved then
          t.retrieved = true
          local ok, err = t.result[1], t.result[2]
          if not ok and not first_err and not errors.is(err, "cancelled") then
            first_err = err
            s:cancel("a task in the scope failed")
          end
        end
      end
    end
    if s.open == 0 then break end
    if not current then error("sched.scope waits for its tasks: run it inside a task", 2) end
    s.waiter = current
    local ok, err = pcall(park, detach)
    s.waiter = nil
    if not ok then                -- this task was interrupted: its tasks must not outlive the scope
      s:cancel("scope interrupted")
      first_err = err
    end
  end
  if first_err then error(first_err, 0) end
  return unpack(r, 2, r.n)
end

---------------------------------------------------------------------------------------------------
-- the loop

local function step(t, why, value)
  current = t
  t.status = "running"
  local ok, r
  if why == "start" then ok, r = co_resume(t.co)
  else ok, r = co_resume(t.co, why, value) end
  current = nil
  if not ok then
    -- only reachable if the scheduler's own wrapper failed; keep the process alive and say so
    io.stderr:write("runbox: internal scheduler error in ", tostring(t), ": ", tostring(r), "\n")
    if t.status ~= "done" then finish(t, false, r) end
  elseif t.status ~= "done" and r ~= PARK then
    t.status = "done"
    finish(t, false, errors.new("yield", "coroutine.yield called directly in a task; use sched functions"))
  end
end

local function deliver(id)
  local t = by_id[id]
  if t then
    by_id[id] = nil
    wake(t, "wake", id)
    return
  end
  local d = deadline_of[id]
  if d then
    deadline_of[id] = nil
    local e = errors.new("timeout", ("deadline of %gs exceeded"):format(d[2].seconds), {scope = d[2]})
    interrupt(d[1], e)
  end
end

local signal_names = {[1] = "SIGHUP", [2] = "SIGINT", [15] = "SIGTERM"}
-- Optional hook(signame, count), called first for every signal (recipes print their own message).
-- Returning true claims the signal: nothing is cancelled and it is not counted (the REPL: Ctrl-C
-- stops the running line only).
M.on_signal = nil

local function handle_signal(sig)
  local name = signal_names[sig] or ("signal " .. sig)
  if M.on_signal and M.on_signal(name, signals_seen + 1) == true then return end
  signals_seen = signals_seen + 1
  if signals_seen == 1 then
    exit_request = exit_request or {status = 128 + sig, signal = name}
    io.stderr:write("\nrunbox: ", name, " received: cancelling, cleaning up (a second signal does not skip cleanup)\n")
    cancel_all("interrupted by " .. name)
  else
    io.stderr:write("runbox: still cleaning up ", nlive, " task(s); please wait\n")
  end
end

local function deadlocked()
  return #runq == 0 and next(by_id) == nil and next(deadline_of) == nil
end

-- Runs ready tasks and polls the loop until done() is true.
local spare_q = {}       -- the run queue's other table: the two take turns (no table per turn)

local function run_until(done)
  while true do
    local q = runq
    runq = spare_q
    for i = 1, #q do
      local e = q[i]
      q[i] = nil
      if e[1].status == "ready" then step(e[1], e[2], e[3]) end
    end
    spare_q = q
    if done() then return true end
    if deadlocked() then return false end
    -- poll even when tasks are ready (without waiting), so a task that keeps yielding cannot
    -- starve timers, I/O and signals
    local n, sigs = loop.poll(#runq > 0 and 0 or -1, poll_ids)
    for i = 1, n do deliver(poll_ids[i]) end
    if sigs then for _, s in ipairs(sigs) do handle_signal(s) end end
  end
end

-- Lets the loop turn without a task (the REPL between lines): runs until done() or a deadlock.
M.run_until = run_until

local function report_failure(t, err)
  if errors.is(err, "cancelled") and exit_request then return end
  local msg = t.traceback or errors.message(err)
  io.stderr:write("runbox: ", msg, "\n")
end

-- Cancels every remaining task and lets their cleanup run to the end.
function M.shutdown(reason)
  cancel_all(reason)
  if not run_until(function() return nlive == 0 end) then
    for t in pairs(live) do
      io.stderr:write("runbox: ", tostring(t), " is still waiting on an event nothing can set\n")
    end
  end
end

-- Runs fn(...) as the main task until it ends, then cleans up every other task.
-- Returns the process exit status.
function M.main(fn, ...)
  local real_exit = os.exit
  os.exit = function(status)
    if status == true or status == nil then status = 0 elseif status == false then status = 1 end
    errors.raise("exit", "exit " .. tostring(status), {status = status})
  end
  local main = M.spawn(fn, ...)
  main.name = "main"
  if not run_until(function() return main.status == "done" end) then
    main:cancel("deadlock")
    io.stderr:write("runbox: deadlock: every task waits on an event that nothing can set\n")
    run_until(function() return main.status == "done" end)
  end
  M.shutdown("main task ended")
  M.report_unobserved()
  os.exit = real_exit
  local ok, err = main.result[1], main.result[2]
  local status = 0
  if exit_request then
    status = exit_request.status or 0
  elseif not ok then
    report_failure(main, err)
    status = 1
  end
  return status
end

-- Returns the tasks that failed since the last call and that nothing waited for, so their errors
-- are never silent (main reports them at exit; the REPL after each line).
function M.take_unobserved()
  local out = {}
  for _, t in ipairs(failed) do
    if not t.retrieved and t.name ~= "main" then out[#out + 1] = t end
  end
  failed = {}
  return out
end

-- Prints the unobserved failures to stderr.
function M.report_unobserved()
  for _, t in ipairs(M.take_unobserved()) do
    io.stderr:write("runbox: ", tostring(t), " failed and nothing waited for it: ",
                    t.traceback or errors.message(t.result[2]), "\n")
  end
end

return M
