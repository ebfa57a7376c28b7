-- Tests for runbox.tar: round trips, excludes, streaming, hostile and corrupt archives.
local T = require "runbox.testing"
local tar = require "runbox.tar"
local sched = require "runbox.sched"
local fs = require "runbox.fs"

local PY = io.open("/usr/bin/python3") and "/usr/bin/python3" or "python3"

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function sh(cmd)
  local ok = os.execute(cmd)
  if not ok then error("command failed: " .. cmd, 2) end
end

local function capture(cmd)
  local f = assert(io.popen(cmd))
  local s = f:read("a")
  f:close()
  return s
end

local function exists(path) return os.execute("test -e " .. q(path) .. " -o -L " .. q(path)) == true end

local ROOT = capture("mktemp -d /tmp/runbox-tar-test.XXXXXX"):gsub("%s+$", "")
local counter = 0

-- A fresh empty folder under ROOT.
local function fresh(name)
  counter = counter + 1
  local d = ("%s/%d-%s"):format(ROOT, counter, name)
  sh("mkdir -p " .. q(d))
  return d
end

-- A tree with nested folders, binary, empty and hard-linked files, symlinks, modes and times.
local function make_tree(dir)
  local long = string.rep("n", 120)
  sh(table.concat({
    "set -e", "cd " .. q(dir),
    "mkdir -p a/b/c emptydir 'sp ace'",
    "printf 'hello\\n' > hello.txt",
    "head -c 70000 /dev/urandom > a/bin.dat",
    "printf '\\000\\001\\002\\377' > a/b/small.bin",
    ": > empty.txt",
    "printf x > 'sp ace/f'",
    "printf long > a/" .. long .. ".txt",
    "printf u > a/b/c/ünï.txt",
    "ln -s hello.txt link_to_hello",
    "ln -s ../hello.txt a/up_link",
    "ln -s does-not-exist dangling",
    "ln hello.txt hard_hello",
    "printf '#!/bin/sh\\n' > run.sh && chmod 755 run.sh",
    "printf s > secret && chmod 600 secret",
    "printf g > a/group && chmod 640 a/group",
    "chmod 700 a/b/c",
    "touch -h -d '2020-01-02 03:04:05' hello.txt link_to_hello a/b/small.bin",
    "touch -d '2019-05-06 07:08:09' a/b emptydir",
  }, " && "))
end

-- One line per entry: path, type, mode, link target, link count, whole-second mtime.
local function describe(dir)
  local out = capture("cd " .. q(dir) .. " && find . -mindepth 1 -printf '%P|%y|%m|%l|%n|%T@\\n' | sort")
  return (out:gsub("(|%d+)%.%d+\n", "%1\n"))
end

local function same_tree(a, b)
  T.eq(describe(b), describe(a), "entries, modes, links and times")
  T.ok(os.execute("diff -r --no-dereference " .. q(a) .. " " .. q(b) .. " >/dev/null"), "file contents differ")
end

local function paths_of(entries)
  local set = {}
  for _, e in ipairs(entries) do set[e.path:gsub("/$", "")] = e end
  return set
end

---------------------------------------------------------------------------------------------------
-- packing and round trips

for _, comp in ipairs({"gzip", "zstd", "none"}) do
  T.test("round trip with compression " .. comp, function()
    local src, dst = fresh("src"), fresh("dst")
    make_tree(src)
    local data = assert(tar.pack(src, {compression = comp}))
    local magic = {gzip = "\31\139", zstd = "\40\181\47\253", none = "a/"}
    T.eq(data:sub(1, #magic[comp]), magic[comp], "archive starts with the " .. comp .. " magic")
    T.eq(assert(tar.unpack_string(data, dst)), true)
    same_tree(src, dst)
    -- hard links stay hard links
    local e = paths_of(assert(tar.list_string(data)))
    T.eq(e["hard_hello"].type == "hardlink" or e["hello.txt"].type == "hardlink", true, "one of the pair is a hard link")
  end)
end

T.test("list gives types, sizes, modes, times and link targets", function()
  local src = fresh("src")
  make_tree(src)
  local e = paths_of(assert(tar.list_string(assert(tar.pack(src)))))
  T.eq(e["a/bin.dat"].type, "file")
  T.eq(e["a/bin.dat"].size, 70000)
  T.eq(e["a/b"].type, "dir")
  T.eq(e["link_to_hello"].type, "symlink")
  T.eq(e["link_to_hello"].linkname, "hello.txt")
  T.eq(e["run.sh"].mode, tonumber("755", 8))
  T.eq(e["secret"].mode, tonumber("600", 8))
  T.eq(e["hello.txt"].mtime, tonumber(capture("date -d '2020-01-02 03:04:05' +%s")))
  T.eq(e["empty.txt"].size, 0)
  T.ok(e["a/" .. string.rep("n", 120) .. ".txt"], "a long name survives")
end)

T.test("GNU tar reads our archives and we read GNU tar's", function()
  local src, dst, dst2 = fresh("src"), fresh("dst"), fresh("dst2")
  make_tree(src)
  local gz = fresh("out") .. "/x.tgz"
  assert(tar.pack_file(src, gz))
  local err = capture("tar -xzf " .. q(gz) .. " -C " .. q(dst) .. " 2>&1")
  T.eq(err, "", "GNU tar says nothing")
  same_tree(src, dst)
  local theirs = fresh("out") .. "/theirs.tgz"
  sh("tar -czf " .. q(theirs) .. " -C " .. q(src) .. " .")
  assert(tar.unpack_file(theirs, dst2))
  same_tree(src, dst2)
end)

T.test("exclude patterns: names anywhere, anchored paths, directory-only", function()
  local src = fresh("src")
  sh(table.concat({
    "set -e", "cd " .. q(src),
    "mkdir -p .git/objects src/pkg node_modules/x sub/node_modules build/out other/build/out logs",
    "touch keep.py top.pyc src/pkg/mod.pyc src/pkg/mod.py .git/config .git/objects/o node_modules/x/y.js",
    "touch sub/node_modules/z.js build/out/a build/keep other/build/out/b logs/x.log",
    "mkdir -p files && touch files/node_modules",   -- a file named node_modules: not a directory
  }, " && "))
  local data = assert(tar.pack(src, {exclude = {"*.pyc", ".git", "node_modules/", "build/out", "*.log"}}))
  local e = paths_of(assert(tar.list_string(data)))
  for _, p in ipairs({"keep.py", "src/pkg/mod.py", "build/keep", "other/build/out/b", "files/node_modules", "logs"}) do
    T.ok(e[p], p .. " is kept")
  end
  for _, p in ipairs({"top.pyc", "src/pkg/mod.pyc", ".git", ".git/config", "node_modules", "node_modules/x/y.js",
                      "sub/node_modules", "sub/node_modules/z.js", "build/out", "build/out/a", "logs/x.log"}) do
    T.eq(e[p], nil, p .. " is excluded")
  end
end)

T.test("files list with a base folder, and a prefix inside the archive", function()
  local src = fresh("src")
  sh("cd " .. q(src) .. " && mkdir -p d/e && touch a b d/e/f d/g.pyc")
  local data = assert(tar.pack(src, {files = {"a", "./d"}, exclude = {"*.pyc"}, prefix = "proj"}))
  local e = paths_of(assert(tar.list_string(data)))
  T.ok(e["proj"] and e["proj"].type == "dir", "the prefix folder is an entry")
  T.ok(e["proj/a"] and e["proj/d/e/f"], "listed files and folder contents are in")
  T.eq(e["proj/b"], nil, "unlisted file is out")
  T.eq(e["proj/d/g.pyc"], nil, "excludes apply inside listed folders")
  local _, err = tar.pack(src, {files = {"missing"}})
  T.match(err.message, "missing", "a missing listed file is named")
  T.raises("must be relative", tar.pack, src, {files = {"../x"}})
  T.raises("compression", tar.pack, src, {compression = "lzip"})
  -- raised after other options were copied: nothing may leak (the ASan build checks at exit)
  T.raises("opts.level", tar.pack, src, {compression = "zstd", level = "high"})
end)

T.test("sockets and fifos are skipped", function()
  local src = fresh("src")
  sh("cd " .. q(src) .. " && mkfifo pipe && touch f && " .. PY ..
     " -c 'import socket; s=socket.socket(socket.AF_UNIX); s.bind(\"sock\")'")
  local e = paths_of(assert(tar.list_string(assert(tar.pack(src)))))
  T.ok(e["f"])
  T.eq(e["pipe"], nil)
  T.eq(e["sock"], nil)
end)

T.test("a missing source folder is an error naming it", function()
  local missing = ROOT .. "/no/such/dir"
  local data, err = tar.pack(missing)
  T.eq(data, nil)
  T.eq(err.code, "tar")
  T.match(err.message, (missing:gsub("%p", "%%%0")))
  local out = fresh("out") .. "/x.tgz"
  local ok, err2 = tar.pack_file(missing, out)
  T.eq(ok, nil)
  T.match(err2.message, "no/such/dir")
  T.eq(capture("ls -A " .. q(out:match("^(.*)/"))), "", "no file and no temporary file left")
end)

T.test("an unreadable file is an error naming it", function()
  if capture("id -u"):match("^0") then return end   -- root reads everything
  local src = fresh("src")
  sh("cd " .. q(src) .. " && echo x > locked && chmod 000 locked")
  local _, err = tar.pack(src)
  T.match(err.message, "locked")
end)

---------------------------------------------------------------------------------------------------
-- streaming

T.test("pack_to streams a large file in bounded chunks", function()
  local src, dst = fresh("src"), fresh("dst")
  sh("head -c 24000000 /dev/urandom > " .. q(src .. "/big"))
  local sizes, parts, biggest = 0, {}, 0
  local ok = assert(tar.pack_to(src, function(chunk)
    biggest = math.max(biggest, #chunk)
    sizes = sizes + #chunk
    parts[#parts + 1] = chunk
    return true
  end, {compression = "none"}))
  T.eq(ok, true)
  T.ok(#parts > 40, "many chunks, got " .. #parts)
  T.ok(biggest <= 256 * 1024, "chunk of " .. biggest .. " bytes")
  assert(tar.unpack_string(table.concat(parts), dst))
  same_tree(src, dst)

  -- the packer's own buffer stays small while the file goes through
  local p = assert(tar.packer(src, {compression = "gzip"}))
  local most = 0
  while true do
    local chunk = p:read(64 * 1024)
    if not chunk then break end
    T.ok(#chunk <= 64 * 1024)
    most = math.max(most, p:buffered())
  end
  T.ok(most <= 1024 * 1024, "packer buffer grew to " .. most)
end)

T.test("pack_to with a :write object and a failing writer", function()
  local src, dst = fresh("src"), fresh("dst")
  make_tree(src)
  local pipe = assert(io.popen("tar -xzf - -C " .. q(dst), "w"))   -- has a :write method
  assert(tar.pack_to(src, pipe))
  pipe:close()
  same_tree(src, dst)

  sh("head -c 3000000 /dev/urandom > " .. q(src .. "/big"))
  local calls = 0
  local ok, err = tar.pack_to(src, function()
    calls = calls + 1
    if calls == 2 then return nil, "disk on fire" end
    return true
  end)
  T.eq(ok, nil)
  T.match(err.message, "disk on fire")
  T.eq(calls, 2, "packing stops at the first failed write")
end)

T.test("pack_to feeds a process's stdin (runbox.proc)", function()
  local ok_proc, proc = pcall(require, "runbox.proc")
  if not ok_proc then return end
  local src, dst = fresh("src"), fresh("dst")
  make_tree(src)
  sh("head -c 5000000 /dev/urandom > " .. q(src .. "/big"))
  local p <close> = assert(proc.spawn{"tar", "-xzf", "-", "-C", dst, stdin = "pipe"})
  assert(tar.pack_to(src, p))
  p:close_stdin()
  T.eq(p:wait(), 0)
  same_tree(src, dst)
end)

T.test("long packs let other tasks run", function()
  local src = fresh("src")
  sh("head -c 4000000 /dev/urandom > " .. q(src .. "/big"))
  local ticks, stop = 0, false
  local other = sched.spawn(function() while not stop do ticks = ticks + 1; sched.yield() end end)
  assert(tar.pack(src, {compression = "none"}))
  stop = true
  other:wait()
  T.ok(ticks >= 5, "other task ran " .. ticks .. " times")
end)

T.test("unpack_from spools a reader's stream and cleans up", function()
  local src, parent = fresh("src"), fresh("parent")
  make_tree(src)
  local data = assert(tar.pack(src))
  local pos = 1
  local dst = parent .. "/dst"
  assert(tar.unpack_from(function()
    if pos > #data then return nil end
    local c = data:sub(pos, pos + 999)
    pos = pos + 1000
    sched.yield()
    return c
  end, dst))
  same_tree(src, dst)
  T.eq(capture("ls -A " .. q(parent)), "dst\n", "the spool file is gone")

  local obj = {i = 0, read = function(self)
    self.i = self.i + 1
    if self.i == 1 then return data:sub(1, 100) end
    return nil, "connection reset"
  end}
  local ok, err = tar.unpack_from(obj, parent .. "/dst2")
  T.eq(ok, nil)
  T.match(err.message, "connection reset")
  T.eq(capture("ls -A " .. q(parent)), "dst\n", "no spool file left after a failed read")
end)

T.test("pack_file writes through a temporary file; unpack picks file or data", function()
  local src, out = fresh("src"), fresh("out")
  make_tree(src)
  T.eq(assert(tar.pack_file(src, out .. "/a.tar.zst", {compression = "zstd"})), true)
  T.eq(capture("ls -A " .. q(out)), "a.tar.zst\n")
  local d1, d2 = fresh("d1"), fresh("d2")
  assert(tar.unpack(out .. "/a.tar.zst", d1))
  assert(tar.unpack(assert(fs.read(out .. "/a.tar.zst")), d2))
  same_tree(src, d1)
  same_tree(src, d2)
  local e = tar.list(out .. "/a.tar.zst")
  T.ok(#e > 10)
  local _, err = tar.unpack(out .. "/nope.tar", fresh("d3"))
  T.match(err.message, "nope%.tar")
end)

---------------------------------------------------------------------------------------------------
-- hostile archives: built with Python's tarfile, each must fail naming the entry and leave the
-- sibling canary folder (and /etc) untouched

local MAKE_HOSTILE = [==[
import io, os, sys, tarfile
out, canary = sys.argv[1], sys.argv[2]
def make(name, members):
    with tarfile.open(os.path.join(out, name), "w", format=tarfile.GNU_FORMAT) as t:
        for m in members:
            ti = tarfile.TarInfo(m["name"])
            kind = m.get("type", "file")
            ti.mode = m.get("mode", 0o644)
            if kind == "file":
                data = m.get("data", b"pwned\n")
                ti.size = len(data)
                t.addfile(ti, io.BytesIO(data))
                continue
            ti.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE,
                       "blk": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE, "dir": tarfile.DIRTYPE}[kind]
            ti.linkname = m.get("link", "")
            ti.devmajor, ti.devminor = 1, 3
            t.addfile(ti)
F = lambda n, **k: dict(name=n, **k)
make("abs.tar", [F("ok.txt"), F(canary + "/abs.txt")])
make("dotdot.tar", [F("../canary/escape.txt")])
make("dotdot_inner.tar", [F("a/../../canary/inner.txt")])
make("symlink_etc.tar", [F("etc", type="symlink", link="/etc"), F("etc/runbox-tar-pwned")])
make("symlink_canary.tar", [F("evil", type="symlink", link=canary), F("evil/pwned.txt")])
make("symlink_up.tar", [F("up", type="symlink", link="../.."), F("up/x.txt")])
make("symlink_deep.tar", [F("sub", type="dir", mode=0o755), F("sub/l", type="symlink", link="../../canary")])
make("symlink_name_dotdot.tar", [F("s", type="symlink", link="."), F("s2", type="symlink", link="s/../../canary")])
make("hardlink_passwd.tar", [F("hl", type="hardlink", link="/etc/passwd")])
make("hardlink_up.tar", [F("hl", type="hardlink", link="../canary/secret.txt")])
make("chardev.tar", [F("dev/null2", type="chr")])
make("blockdev.tar", [F("sda9", type="blk")])
make("fifo.tar", [F("p", type="fifo")])
make("through_existing.tar", [F("pre/x.txt")])
make("setuid.tar", [F("suid", mode=0o6755), F("sub", type="dir", mode=0o2755)])
make("fine_links.tar", [F("./", type="dir", mode=0o755), F("./ok.txt"), F("sub", type="dir", mode=0o755),
                        F("sub/l", type="symlink", link="../ok.txt"), F("top", type="symlink", link="sub/l"),
                        F("hard", type="hardlink", link="./ok.txt")])
make("keep_hardlink.tar", [F("l", type="symlink", link=canary), F("ok.txt"), F("h", type="hardlink", link="l/secret.txt")])
make("keep_through.tar", [F("l", type="symlink", link=canary), F("l/pwned.txt")])
make("fixup.tar", [F("d", type="dir", mode=0o777), F("d", type="symlink", link=canary)])
make("many.tar", [F("a"), F("b"), F("c")])
make("big.tar", [F("big", data=b"x" * 5000)])
]==]

local hostile_dir
local function hostile(name)
  if not hostile_dir then
    hostile_dir = fresh("hostile")
    sh("mkdir -p " .. q(hostile_dir .. "/canary"))
    assert(fs.write(hostile_dir .. "/make.py", MAKE_HOSTILE))
    sh(PY .. " " .. q(hostile_dir .. "/make.py") .. " " .. q(hostile_dir) .. " " .. q(hostile_dir .. "/canary"))
  end
  return hostile_dir .. "/" .. name
end

-- A sandbox with target/ and canary/ (holding secret.txt) side by side.
local function sandbox()
  local box = fresh("box")
  sh("mkdir -p " .. q(box .. "/target") .. " " .. q(box .. "/canary") .. " && echo secret > " .. q(box .. "/canary/secret.txt"))
  return box
end

local function check_refused(archive, entry, reason_pattern, prepare, opts)
  local box = sandbox()
  -- the archives name their canary by absolute path: point it at this box's canary
  sh("rm -rf " .. q(hostile("canary")) .. " && ln -s " .. q(box .. "/canary") .. " " .. q(hostile("canary")))
  if prepare then prepare(box) end
  local before_canary = describe(box .. "/canary")
  local before_box = capture("ls -A " .. q(box))
  local ok, err = tar.unpack_file(hostile(archive), box .. "/target", opts)
  T.eq(ok, nil, archive .. " must be refused")
  T.eq(err.code, "tar")
  T.eq(err.reason, "unsafe", err.message)
  T.eq(err.entry, entry)
  T.ok(err.message:find(entry, 1, true), "message names the entry: " .. err.message)
  if reason_pattern then T.match(err.message, reason_pattern) end
  T.eq(describe(box .. "/canary"), before_canary, "canary unchanged")
  T.eq(assert(fs.read(box .. "/canary/secret.txt")), "secret\n")
  T.eq(capture("ls -A " .. q(box)), before_box, "nothing new beside the target")
  T.ok(not exists("/etc/runbox-tar-pwned"), "nothing written in /etc")
  T.ok(not exists(hostile("canary") .. "/pwned.txt") and not exists(hostile_dir .. "/abs.txt"))
  return err
end

local cases = {
  {"abs.tar", nil, "absolute path"},
  {"dotdot.tar", "../canary/escape.txt", "'%.%.'"},
  {"dotdot_inner.tar", "a/../../canary/inner.txt", "'%.%.'"},
  {"symlink_etc.tar", "etc", "absolute"},
  {"symlink_canary.tar", "evil", "absolute"},
  {"symlink_up.tar", "up", "outside"},
  {"symlink_deep.tar", "sub/l", "outside"},
  {"symlink_name_dotdot.tar", "s2", "after a name"},
  {"hardlink_passwd.tar", "hl", "hard link"},
  {"hardlink_up.tar", "hl", "hard link"},
  {"chardev.tar", "dev/null2", "device"},
  {"blockdev.tar", "sda9", "device"},
  {"fifo.tar", "p", "FIFO"},
}
for _, c in ipairs(cases) do
  T.test("refuses hostile archive " .. c[1], function()
    local entry = c[2] or hostile("canary") .. "/abs.txt"
    check_refused(c[1], entry, c[3])
  end)
end

T.test("refuses writing through a symlink already in the target", function()
  check_refused("through_existing.tar", "pre/x.txt", "symlink", function(box)
    sh("ln -s " .. q(box .. "/canary") .. " " .. q(box .. "/target/pre"))
  end)
end)

T.test("outside_links = skip leaves outside symlinks out", function()
  local box = sandbox()
  assert(tar.unpack_file(hostile("symlink_etc.tar"), box .. "/target", {outside_links = "skip"}))
  T.eq(capture("cd " .. q(box .. "/target") .. " && find . | sort"), ".\n./etc\n./etc/runbox-tar-pwned\n")
  T.ok(not exists("/etc/runbox-tar-pwned"))
  assert(tar.unpack_file(hostile("fine_links.tar"), box .. "/t2", {outside_links = "skip"}))
  T.eq(capture("readlink " .. q(box .. "/t2/sub/l")), "../ok.txt\n", "inside links are kept")
end)

T.test("outside_links = keep: links are made, nothing goes through them", function()
  local opts = {outside_links = "keep"}
  check_refused("keep_through.tar", "l/pwned.txt", "symlink", nil, opts)
  check_refused("symlink_up.tar", "up/x.txt", "symlink", nil, opts)
  local err = check_refused("keep_hardlink.tar", "h", "through a symlink", nil, opts)
  T.match(err.message, "l/secret%.txt")
  local box = sandbox()
  sh("rm -rf " .. q(hostile("canary")) .. " && ln -s " .. q(box .. "/canary") .. " " .. q(hostile("canary")))
  assert(tar.unpack_file(hostile("symlink_canary.tar"), box .. "/target", {outside_links = "keep"}) == nil)
  T.eq(capture("readlink " .. q(box .. "/target/evil")), hostile("canary") .. "\n", "the link itself was made")
  T.ok(not exists(box .. "/canary/pwned.txt"))
  T.raises("outside_links", tar.unpack_file, hostile("fine_links.tar"), box .. "/t3", {outside_links = "yes"})
end)

T.test("outside_links = keep: deferred folder modes do not follow a swapped-in link", function()
  local box = sandbox()
  sh("rm -rf " .. q(hostile("canary")) .. " && ln -s " .. q(box .. "/canary") .. " " .. q(hostile("canary")))
  local before = capture("stat -c '%a %Y' " .. q(box .. "/canary"))
  assert(tar.unpack_file(hostile("fixup.tar"), box .. "/target", {outside_links = "keep"}))
  T.eq(capture("stat -c '%a %Y' " .. q(box .. "/canary")), before, "canary mode and time unchanged")
end)

T.test("refuses a hostile string archive too", function()
  local box = sandbox()
  local ok, err = tar.unpack_string(assert(fs.read(hostile("dotdot.tar"))), box .. "/target")
  T.eq(ok, nil)
  T.eq(err.entry, "../canary/escape.txt")
  T.ok(not exists(box .. "/canary/escape.txt"))
end)

T.test("unpacking leaves the working directory alone, even when cancelled", function()
  local pwd = capture("pwd")
  local src, dst = fresh("src"), fresh("dst")
  sh("cd " .. q(src) .. " && for i in 1 2 3 4 5 6; do head -c 3000000 /dev/urandom > f$i; done")
  local data = assert(tar.pack(src, {compression = "none"}))
  local task = sched.spawn(tar.unpack_string, data, dst)
  sched.yield()
  task:cancel("test")
  local ok, err = task:wait()
  T.eq(ok, false)
  T.eq(err.code, "cancelled")
  T.eq(capture("pwd"), pwd)
  assert(tar.unpack_string(data, dst))
  same_tree(src, dst)
  local _, uerr = tar.unpack_file(hostile("dotdot.tar"), fresh("dst"))
  T.ok(uerr)
  T.eq(capture("pwd"), pwd)
end)

T.test("setuid and setgid bits are dropped", function()
  local dst = fresh("dst")
  assert(tar.unpack_file(hostile("setuid.tar"), dst))
  T.eq(capture("stat -c %a " .. q(dst .. "/suid") .. " " .. q(dst .. "/sub")), "755\n755\n")
end)

T.test("links that stay inside are fine; ./ entries are accepted", function()
  local dst = fresh("dst")
  assert(tar.unpack_file(hostile("fine_links.tar"), dst))
  T.eq(assert(fs.read(dst .. "/top")), "pwned\n")
  T.eq(capture("readlink " .. q(dst .. "/sub/l")), "../ok.txt\n")
  T.eq(capture("stat -c %h " .. q(dst .. "/hard")), "2\n", "hard link")
end)

T.test("entry and size limits", function()
  local _, err = tar.unpack_file(hostile("many.tar"), fresh("dst"), {max_entries = 2})
  T.eq(err.reason, "limit")
  T.eq(err.entry, "c")
  T.match(err.message, "max_entries")
  local _, err2 = tar.unpack_file(hostile("big.tar"), fresh("dst"), {max_bytes = 4096})
  T.eq(err2.reason, "limit")
  T.match(err2.message, "max_bytes")
  assert(tar.unpack_file(hostile("many.tar"), fresh("dst"), {max_entries = 3, max_bytes = 100}))
end)

---------------------------------------------------------------------------------------------------
-- damaged input

T.test("corrupt archives fail cleanly", function()
  local src = fresh("src")
  sh("head -c 300000 /dev/urandom > " .. q(src .. "/r"))
  local data = assert(tar.pack(src))
  local ok, err = tar.unpack_string(data:sub(1, #data // 2), fresh("dst"))
  T.eq(ok, nil)
  T.eq(err.reason, "corrupt")
  T.match(err.message, "archive")

  local noise = capture("head -c 4096 /dev/urandom")
  local ok2, err2 = tar.unpack_string(noise, fresh("dst"))
  T.eq(ok2, nil)
  T.eq(err2.reason, "corrupt")
  T.match(err2.message, "not a readable tar archive")
  local l, err3 = tar.list_string(noise)
  T.eq(l, nil)
  T.match(err3.message, "not a readable tar archive")
  local l2, err4 = tar.list_string(data:sub(1, #data // 2))
  T.eq(l2, nil)
  T.ok(err4.message)
  local ok5, err5 = tar.unpack_string("", fresh("dst"))
  T.eq(ok5, nil, "an empty string is not an archive")
  T.ok(err5.message)
end)

T.test("cleanup", function() sh("rm -rf " .. q(ROOT)) end)

T.run()
