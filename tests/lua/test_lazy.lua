-- libcurl and libarchive are loaded when runbox.http / runbox.tar are first required (see
-- engine/lazy.h): a missing library is a clear error naming it and its Debian package.
local T = require "runbox.testing"


local function runbox(code, env) return T.run_code(code, {env = env}) end

T.test("a missing libcurl fails require('runbox.http'), naming library and package", function()
  local r = runbox('require("runbox.http")', {RUNBOX_LIBCURL = "/nonexistent/libcurl.so"})
  T.eq(r.code, 1)
  T.match(r.stderr, "cannot load libcurl")
  T.match(r.stderr, "/nonexistent/libcurl%.so")
  T.match(r.stderr, "Debian package libcurl4")
end)

T.test("a missing libarchive fails require('runbox.tar'), naming library and package", function()
  local r = runbox('require("runbox.tar")', {RUNBOX_LIBARCHIVE = "/nonexistent/libarchive.so"})
  T.eq(r.code, 1)
  T.match(r.stderr, "cannot load libarchive")
  T.match(r.stderr, "/nonexistent/libarchive%.so")
  T.match(r.stderr, "Debian package libarchive13")
end)

T.test("the error can be caught, and the rest of runbox still works", function()
  local r = runbox([[
    local ok, err = pcall(require, "runbox.http")
    assert(not ok and err:match("libcurl"))
    local tar = require "runbox.tar"
    print(type(tar.list))
  ]], {RUNBOX_LIBCURL = "/nonexistent/libcurl.so"})
  T.eq(r.code, 0, r.stderr)
  T.eq(r.stdout, "function\n")
end)

T.test("a library without runbox's functions is refused, naming the missing one", function()
  local r = runbox('require("runbox.http")', {RUNBOX_LIBCURL = "libarchive.so.13"})
  T.eq(r.code, 1)
  T.match(r.stderr, "libcurl that was loaded lacks curl_")
end)

T.test("RUNBOX_LIBCURL / RUNBOX_LIBARCHIVE point at the library to use", function()
  local r = runbox('print(require("runbox.c.http").version():match("^libcurl/")); '
    .. 'print(type(require("runbox.tar").list))',
    {RUNBOX_LIBCURL = "libcurl.so.4", RUNBOX_LIBARCHIVE = "libarchive.so.13"})
  T.eq(r.code, 0, r.stderr)
  T.eq(r.stdout, "libcurl/\nfunction\n")
end)

T.test("start-up loads neither library", function()
  local r = runbox('for l in io.lines("/proc/self/maps") do '
    .. 'if l:match("libcurl") or l:match("libarchive") then print(l) end end')
  T.eq(r.code, 0, r.stderr)
  T.eq(r.stdout, "")
end)

T.run()
