-- runbox.tar: pack a directory into a tar archive (gzip, zstd or none), stream it to a writer
-- such as a process's stdin, and unpack archives safely (nothing may land outside the target).
--
--   tar.pack(dir, opts) -> string              tar.pack_file(dir, out, opts) -> true
--   tar.pack_to(dir, writer, opts) -> true     tar.packer(dir, opts) -> object with :read(n)
--   tar.unpack_file(path, dest, opts)          tar.unpack_string(data, dest, opts)
--   tar.unpack(path_or_data, dest, opts)       tar.unpack_from(reader, dest, opts)
--   tar.list(path) / tar.list_string(data) -> {{path=, size=, type=, mode=, mtime=, linkname=}...}
--
-- Failures return nil, err: err.code is "tar", err.reason one of "io" (missing or unreadable
-- files, a full disk), "corrupt" (not a readable archive), "unsafe" (a hostile entry), "limit"
-- (opts.max_entries / opts.max_bytes), and err.entry names the archive entry when there is one.
local ctar = require "runbox.c.tar"
local errors = require "runbox.errors"
local sched = require "runbox.sched"

local M = {}

local CHUNK = 256 * 1024          -- bytes per packer:read
local STEP = 8 * 1024 * 1024      -- bytes of file data unpacked between two yields

local function fail(message, reason, entry)
  return nil, errors.new("tar", message, {reason = reason or "io", entry = entry})
end

-- Lets other tasks run between two chunks of a long job (a no-op outside a task).
local function pass()
  if sched.current() then sched.yield() end
end

local function check_dir(dir, fname)
  if type(dir) ~= "string" or dir == "" then
    error(("tar.%s: the directory must be a non-empty string, got %s"):format(fname, type(dir)), 3)
  end
end

local function check_opts(opts, fname)
  if opts ~= nil and type(opts) ~= "table" then
    error(("tar.%s: opts must be a table, got %s"):format(fname, type(opts)), 3)
  end
  return opts or {}
end

-- A pull-based packer: p:read(n) returns the next bytes of the archive, nil at the end, or
-- nil, err. p:close() releases it early (it is also released when collected).
function M.packer(dir, opts)
  check_dir(dir, "packer")
  local o = {}
  for k, v in pairs(check_opts(opts, "packer")) do o[k] = v end
  o.dir = dir
  local p, err = ctar.packer(o)
  if not p then return fail(err, "io") end
  return p
end

-- Feeds every chunk of the archive to emit(chunk), which returns true or nil, err.
local function drain(dir, opts, fname, emit)
  check_dir(dir, fname)
  local p <close>, err = M.packer(dir, opts)
  if not p then return nil, err end
  while true do
    local chunk, cerr = p:read(CHUNK)
    if not chunk then
      if cerr then return fail(cerr, "io") end
      return true
    end
    local ok, werr = emit(chunk)
    if not ok then return nil, werr end
  end
end

-- The whole archive as a string.
function M.pack(dir, opts)
  local parts = {}
  local ok, err = drain(dir, opts, "pack", function(chunk)
    parts[#parts + 1] = chunk
    pass()
    return true
  end)
  if not ok then return nil, err end
  return table.concat(parts)
end

local function writer_fn(writer)
  if type(writer) == "function" then return writer end
  if (type(writer) == "table" and writer.write) or type(writer) == "userdata" then
    return function(chunk) return writer:write(chunk) end
  end
  error("tar.pack_to: writer must be a function(chunk) or an object with a :write(chunk) method", 3)
end

-- Streams the archive to writer: a function(chunk) or an object with :write(chunk) (such as a
-- process's stdin, whose write parks the task until the pipe drains). A writer that returns
-- nil, err (or false, err) stops the packing; that error is returned.
function M.pack_to(dir, writer, opts)
  local write = writer_fn(writer)
  return drain(dir, opts, "pack_to", function(chunk)
    local ok, err = write(chunk)
    if ok == false or (ok == nil and err ~= nil) then
      if errors.is(err) then return nil, err end
      return fail("tar.pack_to: the writer failed: " .. errors.message(err or "returned false"), "io")
    end
    pass()
    return true
  end)
end

-- A to-be-closed guard that removes path unless guard.path was cleared.
local function remover(path)
  return setmetatable({path = path}, {__close = function(g) if g.path then os.remove(g.path) end end})
end

-- Writes the archive to out_path through a temporary file in the same folder, renamed into place
-- at the end: a failed pack leaves no half-written file.
function M.pack_file(dir, out_path, opts)
  check_dir(dir, "pack_file")
  if type(out_path) ~= "string" or out_path == "" then
    error("tar.pack_file: out_path must be a non-empty string", 2)
  end
  local tmp, terr = ctar.tempfile(out_path .. ".part-", tonumber("644", 8))
  if not tmp then return fail(terr, "io") end
  local cleanup <close> = remover(tmp)
  local f, ferr = io.open(tmp, "wb")
  if not f then return fail(("cannot write '%s': %s"):format(out_path, ferr), "io") end
  local ok, err = drain(dir, opts, "pack_file", function(chunk)
    local wok, werr = f:write(chunk)
    if not wok then return fail(("cannot write '%s': %s"):format(out_path, werr), "io") end
    pass()
    return true
  end)
  local cok, cerr = f:close()
  if not ok then return nil, err end
  if not cok then return fail(("cannot write '%s': %s"):format(out_path, cerr), "io") end
  local rok, rerr = os.rename(tmp, out_path)
  if not rok then return fail(("cannot write '%s': %s"):format(out_path, rerr), "io") end
  cleanup.path = nil   -- renamed: nothing left to remove
  return true
end

---------------------------------------------------------------------------------------------------
-- unpacking

local function unpack_src(src, dest, opts, fname)
  if type(dest) ~= "string" or dest == "" then
    error(("tar.%s: dest must be a non-empty string"):format(fname), 3)
  end
  opts = check_opts(opts, fname)
  local u <close>, err, reason = ctar.unpacker(src, dest, opts)
  if not u then return fail(err, reason) end
  while true do
    local done, uerr, ureason, entry = u:step(STEP)
    if done == nil then return fail(uerr, ureason, entry) end
    if done then return true end
    pass()
  end
end

-- Unpacks the archive file at path into dest (created if missing). Compression is detected.
-- opts.max_entries, opts.max_bytes: optional limits on the number of entries and file bytes.
function M.unpack_file(path, dest, opts)
  if type(path) ~= "string" then error("tar.unpack_file: path must be a string", 2) end
  return unpack_src({path = path}, dest, opts, "unpack_file")
end

-- Unpacks archive bytes held in a string.
function M.unpack_string(data, dest, opts)
  if type(data) ~= "string" then error("tar.unpack_string: data must be a string", 2) end
  return unpack_src({data = data}, dest, opts, "unpack_string")
end

-- Unpacks a file path or archive bytes: opts.from = "file" | "string"; without it, a string
-- holding a NUL byte (every tar archive does) is data, anything else a path.
function M.unpack(src, dest, opts)
  if type(src) ~= "string" then error("tar.unpack: the source must be a path or a string of archive bytes", 2) end
  opts = check_opts(opts, "unpack")
  local from = opts.from or (src:find("\0", 1, true) and "string" or "file")
  if from == "file" then return unpack_src({path = src}, dest, opts, "unpack") end
  if from == "string" then return unpack_src({data = src}, dest, opts, "unpack") end
  error(('tar.unpack: opts.from must be "file" or "string", not %q'):format(tostring(from)), 2)
end

local function reader_fn(reader)
  if type(reader) == "function" then return reader end
  if type(reader) == "table" or type(reader) == "userdata" then
    return function() return reader:read() end
  end
  error("tar.unpack_from: reader must be a function returning chunks or an object with :read()", 3)
end

local function spool_file(dest)
  local parent = dest:gsub("/+$", ""):match("^(.*)/[^/]*$")
  if parent == "" then parent = "/" end
  local tmp = ctar.tempfile((parent or ".") .. "/.runbox-tar-")
  if tmp then return tmp end
  local tmpdir = os.getenv("TMPDIR") or "/tmp"
  return ctar.tempfile(tmpdir .. "/runbox-tar-")
end

-- Unpacks a stream: reader is a function returning the next chunk (nil at the end, or nil, err)
-- or an object with :read() doing the same. The stream is spooled to a temporary file (next to
-- dest, or in $TMPDIR) because libarchive reads by pulling; the file is removed afterwards.
function M.unpack_from(reader, dest, opts)
  local read = reader_fn(reader)
  if type(dest) ~= "string" or dest == "" then error("tar.unpack_from: dest must be a non-empty string", 2) end
  local tmp, terr = spool_file(dest)
  if not tmp then return fail(terr, "io") end
  local cleanup <close> = remover(tmp)
  local f, ferr = io.open(tmp, "wb")
  if not f then return fail(("cannot spool the archive to '%s': %s"):format(tmp, ferr), "io") end
  local fclose <close> = setmetatable({}, {__close = function() io.close(f) end})
  while true do
    local chunk, err = read()
    if chunk == nil then
      if err ~= nil then
        if errors.is(err) then return nil, err end
        return fail("tar.unpack_from: the reader failed: " .. errors.message(err), "io")
      end
      break
    end
    local ok, werr = f:write(chunk)
    if not ok then return fail(("cannot spool the archive to '%s': %s"):format(tmp, werr), "io") end
  end
  f:flush()
  return unpack_src({path = tmp}, dest, opts, "unpack_from")
end

---------------------------------------------------------------------------------------------------
-- listing

local function list(src)
  local entries, err, reason = ctar.list(src)
  if not entries then return fail(err, reason) end
  return entries
end

-- Entries of the archive file at path: {path=, size=, type=, mode=, mtime=, uid=, gid=, linkname=}.
-- type is "file", "dir", "symlink", "hardlink", "chardev", "blockdev", "fifo" or "socket".
function M.list(path)
  if type(path) ~= "string" then error("tar.list: path must be a string", 2) end
  return list({path = path})
end

-- Entries of archive bytes held in a string.
function M.list_string(data)
  if type(data) ~= "string" then error("tar.list_string: data must be a string", 2) end
  return list({data = data})
end

return M
