-- progress: the transfer line on a terminal (redrawn in place) and off one (periodic plain lines).
local T = require "runbox.testing"
local progress = require "runbox.progress"
local sched = require "runbox.sched"

T.test("sizes and clocks read like a person would write them", function()
  T.eq(progress.bytes(512), "512 B")
  T.eq(progress.bytes(1536), "1.5 KiB")
  T.eq(progress.bytes(400 * 1024 * 1024), "400.0 MiB")
  T.eq(progress.clock(75), "1:15")
  T.eq(progress.clock(4000), "1:06:40")
end)

T.test("off a terminal: a plain line at most every `every` seconds, and one at the end", function()
  local out = {}
  local bar = progress.new{label = "upload", total = 1000, tty = false, every = 0.2,
                           out = function(s) out[#out + 1] = s end}
  for _ = 1, 10 do bar:add(50); sched.sleep(0.05) end      -- 0.5 s: two or three lines
  T.ok(#out >= 1 and #out <= 3, "periodic lines: " .. #out)
  bar:add(500)
  bar:finish()
  bar:finish()                                              -- idempotent
  local last = out[#out]
  T.match(last, "^upload  100%%  1000 B / 1000 B  [%d.]+ [KMG]?i?B/s  in 0:0%d\n$")
  T.eq(last:find("\r", 1, true), nil)
  for _, l in ipairs(out) do T.eq(l:find("%[#"), nil) end   -- no bar drawing in logs
end)

T.test("on a terminal: one line redrawn in place with a bar, the rate and an ETA", function()
  local out = {}
  local bar = progress.new{label = "codex", total = 4096, tty = true, width = 8,
                           out = function(s) out[#out + 1] = s end}
  sched.sleep(0.12)
  bar:add(1024)
  T.eq(#out, 1)
  T.match(out[1], "^\r\27%[Kcodex  %[##%-%-%-%-%-%-%]   25%%  1%.0 KiB / 4%.0 KiB  .+/s  ETA %d+:%d%d$")
  bar:add(1024)                                             -- within 0.1 s: not redrawn
  T.eq(#out, 1)
  bar:set(4096)
  bar:finish()
  T.match(out[#out], "%[########%]  100%%.*in 0:00\n$")
end)

T.test("an unknown total shows bytes and rate only", function()
  local out = {}
  local bar = progress.new{label = "download", tty = false, out = function(s) out[#out + 1] = s end}
  bar:add(2048)
  bar:finish()
  T.match(out[#out], "^download  2%.0 KiB  .+/s  in 0:00\n$")
  T.raises("total must be a number", progress.new, {total = "big"})
end)

T.run()
