local T = require "runbox.testing"
local fs = require "runbox.fs"
local proc = require "runbox.proc"
local sched = require "runbox.sched"
local errors = require "runbox.errors"

local BIN = T.runbox_bin()

local child = T.run_code

local function quote(s) return ("%q"):format(s) end

T.test("read and write round-trip binary data", T.with_temp_dir(function(d)
  local data = "a\0b\255\n" .. ("x"):rep(200000)
  T.eq(fs.write(d .. "/f", data), true)
  T.eq(fs.read(d .. "/f"), data)
  T.eq(fs.write(d .. "/f", "short"), true)   -- truncates
  T.eq(fs.read(d .. "/f"), "short")
  T.eq(fs.write(d .. "/empty", ""), true)
  T.eq(fs.read(d .. "/empty"), "")
end))

T.test("read of a missing file names it", T.with_temp_dir(function(d)
  local v, err = fs.read(d .. "/missing.txt")
  T.eq(v, nil)
  T.ok(errors.is(err, "fs"))
  T.eq(err.reason, "not_found")
  T.eq(err.path, d .. "/missing.txt")
  T.match(tostring(err), "missing%.txt': No such file or directory")
  local _, e2 = fs.read(d)
  T.match(tostring(e2), "Is a directory")
  local _, e3 = fs.write(d .. "/no/such/dir/f", "x")
  T.match(tostring(e3), "cannot write '.*/no/such/dir/f'")
end))

T.test("bad arguments raise", function()
  T.raises("bad argument", fs.read)
  T.raises("bad argument", fs.write, "/tmp/x", {})
  T.raises("mode must be octal", fs.chmod, "/tmp", "rwx")
  T.raises("between 0 and 07777", fs.chmod, "/tmp", 1 << 20)
  T.raises("bad argument", fs.append, "/tmp/x", "a", "yes")
end)

T.test("write_atomic replaces the file and leaves nothing else", T.with_temp_dir(function(d)
  local p = d .. "/data.json"
  T.eq(fs.write_atomic(p, "one"), true)
  T.eq(fs.read(p), "one")
  T.eq(fs.write_atomic(p, "two"), true)
  T.eq(fs.read(p), "two")
  T.eq(fs.list(d), {"data.json"})
  local ok, err = fs.write_atomic(d .. "/nodir/x", "y")
  T.eq(ok, nil)
  T.match(tostring(err), "cannot create a temporary file in '.*/nodir'")
end))

T.test("write_atomic keeps the mode of the file it replaces, or takes the one given", T.with_temp_dir(function(d)
  local p = d .. "/script.sh"
  fs.write(p, "old")
  fs.chmod(p, "750")
  fs.write_atomic(p, "new")
  T.eq(fs.stat(p).mode, tonumber("750", 8))
  fs.write_atomic(p, "newer", "600")
  T.eq(fs.stat(p).mode, tonumber("600", 8))
  fs.write_atomic(d .. "/other", "x", tonumber("640", 8))
  T.eq(fs.stat(d .. "/other").mode, tonumber("640", 8))
end))

T.test("write_atomic in an unwritable directory fails and leaves no temp file", T.with_temp_dir(function(d)
  local target = d .. "/ro"
  fs.mkdir_p(target)
  fs.write(target .. "/f", "old")
  fs.chmod(d, "755")
  fs.chmod(target, "555")
  -- root ignores directory permissions: run the writer as nobody then
  local cmd = {BIN, "-e", ([[
    local fs = require "runbox.fs"
    local ok, err = fs.write_atomic(%s, "new")
    assert(ok == nil, "write_atomic should fail")
    print(err.reason, err)
  ]]):format(quote(target .. "/f")), timeout = 30}
  local r = proc.run{"id", "-u"}
  if r.stdout:match("^0") then table.insert(cmd, 1, "--clear-groups"); table.insert(cmd, 1, "--regid=65534")
    table.insert(cmd, 1, "--reuid=65534"); table.insert(cmd, 1, "setpriv") end
  r = assert(proc.run(cmd))
  T.eq(r.code, 0, r.stderr)
  T.match(r.stdout, "^permission")
  T.match(r.stdout, "cannot create a temporary file in '" .. target:gsub("%p", "%%%0") .. "'")
  T.eq(fs.list(target), {"f"})
  T.eq(fs.read(target .. "/f"), "old")
end))

T.test("write_atomic that fails while writing removes its temp file", T.with_temp_dir(function(d)
  -- a 1 KiB file size limit makes write(2) fail with EFBIG after the temp file exists
  fs.write(d .. "/f", "old")
  local script = ([[
    local fs = require "runbox.fs"
    local ok, err = fs.write_atomic(%s, ("x"):rep(100000))
    print(ok, err)
  ]]):format(quote(d .. "/f"))
  local r = assert(proc.run{"sh", "-c", 'trap "" XFSZ; ulimit -f 1; exec "$0" -e "$1"', BIN, script, timeout = 30})
  T.eq(r.code, 0, r.stderr)
  T.match(r.stdout, "^nil\tcannot write '" .. d:gsub("%p", "%%%0") .. "/f': File too large")
  T.eq(fs.list(d), {"f"})
  T.eq(fs.read(d .. "/f"), "old")
end))

T.test("append adds records, creates the file, fsyncs on request", T.with_temp_dir(function(d)
  local p = d .. "/journal.jsonl"
  T.eq(fs.append(p, "one\n"), true)
  T.eq(fs.append(p, "two\n", {fsync = true}), true)
  T.eq(fs.append(p, "three\n", {}), true)
  T.eq(fs.read(p), "one\ntwo\nthree\n")
  local _, err = fs.append(d .. "/missing/j", "x")
  T.match(tostring(err), "cannot append to '.*/missing/j'")
end))

T.test("an appender keeps the file open: records, sync, close; errors name the file", T.with_temp_dir(function(d)
  local p = d .. "/journal"
  local a = assert(fs.appender(p))
  T.eq(a:write("one\n"), true)
  T.eq(a:sync(), true)
  fs.append(p, "other\n")                     -- another writer's record lands between, whole
  T.eq(a:write("two\n"), true)
  T.eq(fs.read(p), "one\nother\ntwo\n")
  a:close()
  a:close()
  local ok, err = a:write("three\n")
  T.eq(ok, nil)
  T.ok(errors.is(err, "fs"))
  T.match(err.message, "journal': the appender is closed")
  T.eq(fs.read(p), "one\nother\ntwo\n")
  local none, err2 = fs.appender(d .. "/missing/j")
  T.eq(none, nil)
  T.match(tostring(err2), "cannot append to '.*/missing/j'")
  do local b <close> = assert(fs.appender(p)); b:write("four\n") end
  T.eq(fs.read(p):sub(-5), "four\n")
end))

T.test("appends from concurrent processes never interleave", T.with_temp_dir(function(d)
  local p = d .. "/log"
  local code = ([[
    local fs = require "runbox.fs"
    local tag = ...
    for i = 1, 200 do assert(fs.append(%s, tag:rep(3000) .. "\n")) end
  ]]):format(quote(p))
  local tasks = {}
  for _, tag in ipairs{"a", "b", "c"} do
    tasks[#tasks + 1] = sched.spawn(function() return proc.run{BIN, "-e", code, tag, timeout = 30} end)
  end
  for _, t in ipairs(tasks) do local _, r = t:wait(); T.eq(r.code, 0, r.stderr) end
  local n = 0
  for line in fs.read(p):gmatch("[^\n]*\n") do
    n = n + 1
    T.ok(line == ("a"):rep(3000) .. "\n" or line == ("b"):rep(3000) .. "\n" or line == ("c"):rep(3000) .. "\n",
         "line " .. n .. " is torn")
  end
  T.eq(n, 600)
end))

T.test("copy_file copies content and mode", T.with_temp_dir(function(d)
  local data = ("\0\1binary"):rep(50000)
  fs.write(d .. "/a", data)
  fs.chmod(d .. "/a", "751")
  T.eq(fs.copy_file(d .. "/a", d .. "/b"), true)
  T.eq(fs.read(d .. "/b"), data)
  T.eq(fs.stat(d .. "/b").mode, tonumber("751", 8))
  local _, err = fs.copy_file(d .. "/nope", d .. "/c")
  T.match(tostring(err), "cannot read '.*/nope'")
  local _, err2 = fs.copy_file(d .. "/a", d .. "/no/dir/c")
  T.match(tostring(err2), "cannot write '.*/no/dir/c'")
end))

T.test("mkdir_p makes every level, accepts existing ones, refuses a file in the way", T.with_temp_dir(function(d)
  T.eq(fs.mkdir_p(d .. "/a/b/c"), true)
  T.eq(fs.stat(d .. "/a/b/c").type, "dir")
  T.eq(fs.mkdir_p(d .. "/a/b/c"), true)
  T.eq(fs.mkdir_p(d .. "/a/b/c/"), true)
  T.eq(fs.mkdir_p(d .. "/m", "700"), true)
  T.eq(fs.stat(d .. "/m").mode, tonumber("700", 8))
  fs.write(d .. "/file", "x")
  local ok, err = fs.mkdir_p(d .. "/file/sub")
  T.eq(ok, nil)
  T.match(tostring(err), "Not a directory")
  local _, err2 = fs.mkdir_p(d .. "/file")
  T.match(tostring(err2), "cannot create directory '.*/file': Not a directory")
  T.raises("must not be empty", fs.mkdir_p, "")
end))

T.test("exists, stat and lstat", T.with_temp_dir(function(d)
  fs.write(d .. "/f", "12345")
  fs.symlink("f", d .. "/link")
  fs.symlink("nowhere", d .. "/dangling")
  T.eq(fs.exists(d .. "/f"), true)
  T.eq(fs.exists(d .. "/nope"), false)
  T.eq(fs.exists(d .. "/dangling"), false)
  local st = fs.stat(d .. "/f")
  T.eq(st.type, "file")
  T.eq(st.size, 5)
  T.eq(math.type(st.size), "integer")
  T.ok(math.abs(st.mtime - os.time()) < 60, "mtime is now")
  T.eq(fs.stat(d .. "/link").type, "file")
  T.eq(fs.lstat(d .. "/link").type, "link")
  T.eq(fs.stat(d).type, "dir")
  T.eq(fs.lstat(d .. "/dangling").type, "link")
  local v, err = fs.stat(d .. "/dangling")
  T.eq(v, nil)
  T.match(tostring(err), "cannot stat '.*/dangling'")
  T.eq(fs.stat("/dev/null").type, "char")
end))

T.test("list is sorted and names a missing dir", T.with_temp_dir(function(d)
  for _, n in ipairs{"b", "a", "C", "a.txt", ".hidden"} do fs.write(d .. "/" .. n, "") end
  T.eq(fs.list(d), {".hidden", "C", "a", "a.txt", "b"})
  local _, err = fs.list(d .. "/none")
  T.match(tostring(err), "cannot list '.*/none': No such file")
end))

T.test("walk lists the tree in sorted pre-order without following links", T.with_temp_dir(function(d)
  fs.mkdir_p(d .. "/t/b/deep")
  fs.mkdir_p(d .. "/t/a")
  fs.write(d .. "/t/a/1.txt", "")
  fs.write(d .. "/t/b/deep/2.txt", "")
  fs.write(d .. "/t/z", "")
  fs.mkdir_p(d .. "/outside/secret")
  fs.symlink(d .. "/outside", d .. "/t/b/link")
  T.eq(fs.walk(d .. "/t"), {
    {path = "a", type = "dir"}, {path = "a/1.txt", type = "file"},
    {path = "b", type = "dir"}, {path = "b/deep", type = "dir"}, {path = "b/deep/2.txt", type = "file"},
    {path = "b/link", type = "link"}, {path = "z", type = "file"}})
  T.eq(fs.walk(d .. "/outside/secret"), {})
  local _, err = fs.walk(d .. "/nope")
  T.match(tostring(err), "cannot walk '.*/nope'")
end))

T.test("remove deletes files and empty dirs", T.with_temp_dir(function(d)
  fs.write(d .. "/f", "")
  fs.mkdir_p(d .. "/e")
  fs.mkdir_p(d .. "/full/x")
  T.eq(fs.remove(d .. "/f"), true)
  T.eq(fs.remove(d .. "/e"), true)
  T.eq(fs.list(d), {"full"})
  local _, err = fs.remove(d .. "/full")
  T.match(tostring(err), "cannot remove '.*/full': Directory not empty")
  local _, err2 = fs.remove(d .. "/f")
  T.eq(err2.reason, "not_found")
end))

T.test("remove_tree removes everything, even read-only dirs", T.with_temp_dir(function(d)
  fs.mkdir_p(d .. "/t/a/b/c")
  for i = 1, 20 do fs.write(("%s/t/a/b/c/f%d"):format(d, i), "x") end
  fs.write(d .. "/t/top", "x")
  fs.chmod(d .. "/t/a/b", "555")
  T.eq(fs.remove_tree(d .. "/t"), true)
  T.eq(fs.exists(d .. "/t"), false)
  T.eq(fs.remove_tree(d .. "/t"), true)   -- already gone: fine, like rm -rf
  fs.write(d .. "/single", "x")
  T.eq(fs.remove_tree(d .. "/single"), true)
  T.eq(fs.list(d), {})
end))

T.test("remove_tree does not follow a symlink out of the tree", T.with_temp_dir(function(d)
  fs.mkdir_p(d .. "/outside/keep")
  fs.write(d .. "/outside/keep/precious", "data")
  fs.mkdir_p(d .. "/tree/sub")
  fs.symlink(d .. "/outside", d .. "/tree/sub/escape")
  fs.symlink(d .. "/outside/keep/precious", d .. "/tree/file-link")
  T.eq(fs.remove_tree(d .. "/tree"), true)
  T.eq(fs.exists(d .. "/tree"), false)
  T.eq(fs.read(d .. "/outside/keep/precious"), "data")
  -- the path itself a symlink: only the link goes
  fs.symlink(d .. "/outside", d .. "/link-to-dir")
  T.eq(fs.remove_tree(d .. "/link-to-dir"), true)
  T.eq(fs.exists(d .. "/link-to-dir"), false)
  T.eq(fs.read(d .. "/outside/keep/precious"), "data")
end))

T.test("remove_tree refuses / and empty paths", function()
  for _, p in ipairs{"", "/", "//", "/..", "/tmp/../"} do
    local ok, err = fs.remove_tree(p)
    T.eq(ok, nil, "path " .. p)
    T.eq(err.reason, "invalid")
    T.match(tostring(err), "refuses")
  end
  T.ok(fs.exists("/tmp"))
end)

T.test("temp_dir makes a private dir under TMPDIR", T.with_temp_dir(function(d)
  local t = assert(fs.temp_dir())
  T.match(t, "/runbox%-......$")
  T.eq(fs.stat(t).mode, tonumber("700", 8))
  fs.remove_tree(t)
  local t2 = assert(fs.temp_dir("mine"))
  T.match(t2, "/mine%-......$")
  fs.remove_tree(t2)
  local r = child([[print(require("runbox.fs").temp_dir("x"))]], {env = {TMPDIR = d}})
  T.match(r.stdout, "^" .. d:gsub("%p", "%%%0") .. "/x%-......\n$")
  local r2 = child([[print(require("runbox.fs").temp_dir("x"))]], {env = {TMPDIR = d .. "/missing"}})
  T.match(r2.stdout, "^nil\tcannot create a temporary directory in '.*/missing'")
  T.raises("must not contain '/'", fs.temp_dir, "a/b")
end))

T.test("realpath, rename, symlink, readlink, chmod", T.with_temp_dir(function(d)
  fs.mkdir_p(d .. "/a/b")
  fs.write(d .. "/a/b/f", "x")
  local real = fs.realpath(d)
  T.eq(fs.realpath(d .. "/a/./b/../b/f"), real .. "/a/b/f")
  local _, err = fs.realpath(d .. "/nope")
  T.match(tostring(err), "cannot resolve '.*/nope'")
  -- through a symlinked folder, and relative to the working folder
  T.eq(fs.symlink(d .. "/a", d .. "/alink"), true)
  T.eq(fs.realpath(d .. "/alink/b/../b/f"), real .. "/a/b/f")
  T.eq(fs.realpath("."), assert(fs.realpath(os.getenv("PWD") or ".")))
  local _, errd = fs.realpath(d .. "/a/b/f/x")
  T.eq(errd.reason, "not_found")
  T.match(errd.message, "Not a directory")
  T.eq(fs.rename(d .. "/a/b/f", d .. "/g"), true)
  T.eq(fs.read(d .. "/g"), "x")
  local _, err2 = fs.rename(d .. "/missing", d .. "/h")
  T.match(tostring(err2), "cannot rename '.*/missing' to '.*/h': No such file")
  T.eq(fs.symlink("g", d .. "/l"), true)
  T.eq(fs.readlink(d .. "/l"), "g")
  local long = ("x"):rep(1000)
  fs.symlink(long, d .. "/long")
  T.eq(fs.readlink(d .. "/long"), long)
  local _, err3 = fs.readlink(d .. "/g")
  T.match(tostring(err3), "cannot read link")
  local _, err4 = fs.symlink("g", d .. "/l")
  T.eq(err4.reason, "exists")
  T.eq(fs.chmod(d .. "/g", "0640"), true)
  T.eq(fs.stat(d .. "/g").mode, tonumber("640", 8))
  T.eq(fs.chmod(d .. "/g", 0x1ed), true)
  T.eq(fs.stat(d .. "/g").mode, tonumber("755", 8))
  local _, err5 = fs.chmod(d .. "/nope", "600")
  T.match(tostring(err5), "cannot chmod")
end))

T.test("lock is exclusive, released by unlock, <close> and garbage collection", T.with_temp_dir(function(d)
  local p = d .. "/batch.lock"
  local l = assert(fs.lock(p))
  T.eq(l:held(), true)
  local l2, err = fs.lock(p)   -- a second open file description conflicts even in one process
  T.eq(l2, nil)
  T.eq(err.reason, "locked")
  T.match(tostring(err), "cannot lock '.*/batch.lock': locked by another process")
  T.eq(l:unlock(), true)
  T.eq(l:held(), false)
  T.eq(l:unlock(), true)       -- twice is fine
  do
    local l3 <close> = assert(fs.lock(p))
    T.eq(fs.lock(p), nil)
  end
  local function lock_and_drop() T.ok(fs.lock(p), "released by <close>") end
  lock_and_drop()              -- that lock is garbage now
  collectgarbage()
  collectgarbage()
  local l4 = assert(fs.lock(p), "released by __gc")
  l4:unlock()
  local _, err2 = fs.lock(d .. "/no/dir/lock")
  T.match(tostring(err2), "cannot open lock file")
end))

T.test("lock contention between two processes", T.with_temp_dir(function(d)
  local p, go = d .. "/lock", d .. "/go"
  -- we hold it: the other process is refused
  local l = assert(fs.lock(p))
  local r = child(([[local l, err = require("runbox.fs").lock(%s); print(l, err)]]):format(quote(p)))
  T.match(r.stdout, "^nil\tcannot lock .*locked by another process")
  l:unlock()
  r = child(([[local l, err = require("runbox.fs").lock(%s); print(l ~= nil)]]):format(quote(p)))
  T.eq(r.stdout, "true\n")
  -- the other process holds it (until we create the go file): we are refused; after it exits, not
  local holder = assert(proc.spawn{BIN, "-e", ([[
    local fs, sched = require "runbox.fs", require "runbox.sched"
    local l = assert(fs.lock(%s))
    print("held"); io.stdout:flush()
    for _ = 1, 1000 do if fs.exists(%s) then break end sched.sleep(0.01) end
  ]]):format(quote(p), quote(go)), timeout = 30})
  T.eq(holder:lines()(), "held")
  local mine, err = fs.lock(p)
  T.eq(mine, nil)
  T.eq(err.reason, "locked")
  fs.write(go, "")
  T.eq(holder:wait(), 0)
  holder:close()
  T.ok(fs.lock(p), "free once the holder exited")
end))

T.test("a lock is not inherited by child processes", T.with_temp_dir(function(d)
  local p = d .. "/lock"
  local l = assert(fs.lock(p))
  -- a background process started through the shell (which passes on every inheritable fd)
  local sh = io.popen("sleep 30 >/dev/null 2>&1 & echo $!")
  local pid = sh:read("l")
  sh:close()
  l:unlock()
  local r = child(([[print(require("runbox.fs").lock(%s) ~= nil)]]):format(quote(p)))
  os.execute("kill " .. pid)
  T.eq(r.stdout, "true\n")
end))

T.run()
