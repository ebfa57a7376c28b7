-- Modal volumes: get-or-create by name, list files, download (VolumeGetFile2 gives one URL per
-- 8 MiB block, fetched with HTTP GET), upload (VolumePutFiles2 with the SHA-256 of each block;
-- the blocks the server lacks are PUT to the URLs it returns, then the request is repeated with
-- the PUT responses), remove, commit. Uploads and removals need a v2 volume (new volumes are v2).
local http = require "runbox.http"
local sched = require "runbox.sched"
local errors = require "runbox.errors"
local fs = require "runbox.fs"
local util = require "runbox.util"
local schema = require "runbox.modal.schema"
local client = require "runbox.modal.client"

local M = {}

M.BLOCK = 8 * 1024 * 1024
M.PARALLEL = 8                 -- block transfers at once
M.BATCH = 500                  -- files per VolumePutFiles2 request
M.HTTP_ATTEMPTS = 6
M.HTTP_TIMEOUT = 300           -- seconds per block transfer

local V2 = schema.S.VolumeFsVersion.VOLUME_FS_VERSION_V2
local TYPES = {FILE = "file", DIRECTORY = "dir", SYMLINK = "link", FIFO = "fifo", SOCKET = "socket", UNSPECIFIED = "other"}

local Volume = {}
Volume.__index = Volume

local function fail(message, fields)
  fields = fields or {}
  fields.reason = fields.reason or "volume"
  return nil, errors.new("modal", message, fields)
end

-- Gets the volume `name` (creating it with opts.create). Returns the volume or nil, err
-- (err.reason "not_found" when it does not exist and create is not set).
function M.get(conn, environment, name, opts)
  if type(name) ~= "string" or name == "" then error("modal volume: name must be a non-empty string", 3) end
  opts = opts or {}
  local resp, err = conn:unary("VolumeGetOrCreate", {
    deployment_name = name, environment_name = environment, object_creation_type = opts.create and 1 or 0,
    version = opts.create and V2 or 0,
  })
  if not resp then
    if err.grpc_status == "NOT_FOUND" then
      return nil, errors.new("modal", ("Modal volume '%s' was not found in %s: %s"):format(name,
        environment ~= "" and ("environment '" .. environment .. "'") or "the default environment",
        opts.hint or ("create it (modal volume create %s) or ask for create = true"):format(name)),
        {reason = "not_found", method = err.method, grpc_status = err.grpc_status, volume = name})
    end
    return nil, err
  end
  local version = schema.enum_number("VolumeFsVersion", resp.metadata and resp.metadata.version or resp.version)
  if version == 0 then version = schema.enum_number("VolumeFsVersion", resp.version) end
  return setmetatable({conn = conn, id = resp.volume_id, name = name, version = version == V2 and 2 or 1}, Volume)
end

local function clean(path)
  path = (path or ""):gsub("^/+", ""):gsub("/+$", "")
  return path
end

-- The entries under path (default the root): {path =, type = "file"|"dir"|"link"|..., size =,
-- mtime =}, paths relative to the volume root. opts.recursive lists everything below. A missing
-- path gives nil, err (err.reason "not_found").
function Volume:list(path, opts)
  opts = opts or {}
  local method = self.version == 2 and "VolumeListFiles2" or "VolumeListFiles"
  local out, failures = {}, 0
  while true do
    local call, err, gerr = self.conn:stream(method, {volume_id = self.id, path = clean(path), recursive = opts.recursive or false},
                                             {timeout = 300})
    local got = {}
    if call then
      while true do
        local msg, rerr = call:recv()
        if msg then
          for _, e in ipairs(msg.entries) do
            got[#got + 1] = {path = e.path, type = TYPES[e.type] or "other", size = e.size, mtime = e.mtime}
          end
        else
          gerr = rerr
          break
        end
      end
      call:close()
      if not gerr then
        for _, e in ipairs(got) do out[#out + 1] = e end
        return out
      end
      err = client.error(method, gerr)
    end
    if gerr and gerr.grpc_status == "NOT_FOUND" then
      return fail(("'%s' is not in Modal volume '%s'"):format(clean(path), self.name), {reason = "not_found"})
    end
    failures = failures + 1
    if not (gerr and client.RETRYABLE[gerr.grpc_code]) or failures > 3 then return nil, err end
    sched.sleep(0.1 * 2 ^ failures)
  end
end

---------------------------------------------------------------------------------------------------
-- HTTP transfers of blocks

local function retry_http(what, fn)
  local delay = 0.1
  local last
  for attempt = 1, M.HTTP_ATTEMPTS do
    local resp, err = fn()
    if resp and resp.status < 400 then return resp end
    if resp and resp.status ~= 503 and resp.status ~= 429 and resp.status < 500 then
      return fail(("%s: HTTP status %d"):format(what, resp.status), {http_status = resp.status})
    end
    last = resp and ("HTTP status " .. resp.status) or errors.message(err)
    if attempt < M.HTTP_ATTEMPTS then
      sched.sleep(delay)
      delay = math.min(delay * 2, 5)
    end
  end
  return fail(("%s: %s (gave up after %d attempts)"):format(what, last, M.HTTP_ATTEMPTS))
end

-- GETs url into file f at offset; returns the number of bytes or nil, err.
local function get_block(url, f, offset, what)
  local n
  local resp, err = retry_http(what, function()
    local r, e = http.request{url = url, stream = true, timeout = M.HTTP_TIMEOUT}
    if not r or r.status >= 400 then
      if r then r:close() end
      return r, e
    end
    f:seek("set", offset)
    n = 0
    while true do
      local chunk, rerr = r:read()
      if rerr then r:close() return nil, rerr end
      if not chunk then break end
      f:write(chunk)
      n = n + #chunk
    end
    return r
  end)
  if not resp then return nil, err end
  return n
end

-- A failed call about path: NOT_FOUND says the path is not in the volume.
function Volume:_missing(path, err)
  if err.grpc_status == "NOT_FOUND" then
    return fail(("'%s' is not in Modal volume '%s'"):format(clean(path), self.name), {reason = "not_found"})
  end
  return nil, err
end

-- Downloads the file at path into the local file local_path (folders are made). opts.on_progress
-- (function(bytes)) is called with each block's size. Returns the file size or nil, err.
function Volume:download(path, local_path, opts)
  opts = opts or {}
  local resp, err = self.conn:unary("VolumeGetFile2", {volume_id = self.id, path = clean(path)})
  if not resp then
    return self:_missing(path, err)
  end
  local dir = local_path:match("^(.*)/[^/]*$")
  if dir and dir ~= "" then
    local ok, merr = fs.mkdir_p(dir)
    if not ok then return nil, merr end
  end
  local f, ferr = io.open(local_path, "wb")
  if not f then return fail(("cannot write '%s': %s"):format(local_path, ferr)) end
  local total = 0
  for i, url in ipairs(resp.get_urls) do
    local n, gerr = get_block(url, f, (i - 1) * M.BLOCK,
                              ("downloading block %d of '%s' from Modal volume '%s'"):format(i, clean(path), self.name))
    if not n then f:close() return nil, gerr end
    total = total + n
    if opts.on_progress then opts.on_progress(n) end
  end
  -- blocks may come without their trailing zero bytes (they are stored so): the gaps between
  -- blocks read as zeros, and the end is extended to the file's size
  if total > resp.size then
    f:close()
    return fail(("downloading '%s' from Modal volume '%s': got %d bytes for a file of %d"):format(clean(path), self.name, total, resp.size))
  end
  if resp.size > 0 and f:seek("end") < resp.size then
    f:seek("set", resp.size - 1)
    f:write("\0")
  end
  f:close()
  return resp.size
end

-- The whole content of the file at path, or nil, err.
function Volume:read(path)
  local tmp = os.tmpname()
  local n, err = self:download(path, tmp)
  if not n then os.remove(tmp) return nil, err end
  local data = fs.read(tmp)
  os.remove(tmp)
  return data
end

-- Downloads a file or a folder of the volume into the local folder local_dir: a folder's
-- contents keep their relative paths (no extra level), a file goes under its own name.
-- opts: on_progress(bytes), parallel. Returns {files =, bytes =} or nil, err.
function Volume:get(path, local_dir, opts)
  opts = opts or {}
  local entries, err = self:list(path, {recursive = true})
  if not entries then return nil, err end
  local base = clean(path)
  local jobs = {}
  for _, e in ipairs(entries) do
    local rel
    if e.path == base then rel = base:match("[^/]+$") or base
    elseif base == "" then rel = e.path
    else rel = e.path:sub(#base + 2) end
    if e.type == "file" then jobs[#jobs + 1] = {remote = e.path, dest = local_dir .. "/" .. rel, size = e.size}
    elseif e.type == "dir" then fs.mkdir_p(local_dir .. "/" .. rel) end
  end
  fs.mkdir_p(local_dir)
  local bytes, sem, first_err = 0, sched.semaphore(opts.parallel or M.PARALLEL), nil
  sched.scope(function(scope)
    for _, j in ipairs(jobs) do
      sem:acquire()
      if first_err then sem:release() break end
      scope:spawn(function()
        local n, derr = self:download(j.remote, j.dest, opts)
        sem:release()
        if n then bytes = bytes + n else first_err = first_err or derr end
      end)
    end
  end)
  if first_err then return nil, first_err end
  return {files = #jobs, bytes = bytes}
end

---------------------------------------------------------------------------------------------------
-- upload

local function raw_sha256(data)
  return (util.sha256(data):gsub("..", function(h) return string.char(tonumber(h, 16)) end))
end

-- A block without its trailing zero bytes (the server stores blocks that way).
local function strip_zeros(block)
  local last = block:match("^.*()[^%z]")
  if not last then return "" end
  return block:sub(1, last)
end

-- Reads block i (1-based) of the local file.
local function read_block(path, i)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  f:seek("set", (i - 1) * M.BLOCK)
  local data = f:read(M.BLOCK) or ""
  f:close()
  return data
end

-- The request entry for one local file: {path, size, blocks, mode}, or nil, err.
local function file_entry(item)
  local f, err = io.open(item.src, "rb")
  if not f then return fail(("cannot read '%s': %s"):format(item.src, err)) end
  local blocks, size = {}, 0
  while true do
    local data = f:read(M.BLOCK)
    if not data then break end
    size = size + #data
    blocks[#blocks + 1] = {contents_sha256 = raw_sha256(strip_zeros(data))}
    if #blocks % 4 == 0 then sched.yield() end   -- hashing a big file must not starve the others
  end
  f:close()
  return {path = item.dest, size = size, blocks = blocks, mode = item.mode}
end

local function put_block(url, data, what)
  local resp, err = retry_http(what, function()
    return http.request{method = "PUT", url = url, body = data, timeout = M.HTTP_TIMEOUT,
                        headers = {["content-type"] = "application/octet-stream"}}
  end)
  if not resp then return nil, err end
  return resp.body or ""
end

-- Uploads one batch of files. Returns true or nil, err.
function Volume:_put_batch(items, opts)
  local files = {}
  for i, item in ipairs(items) do
    local e, err = file_entry(item)
    if not e then return nil, err end
    files[i] = e
  end
  local request = {volume_id = self.id, files = files, disallow_overwrite_existing_files = not opts.force}
  local total, reported = 0, 0
  for _, it in ipairs(items) do total = total + it.size end
  local function progress(n)
    reported = reported + n
    if opts.on_progress and n > 0 then opts.on_progress(n) end
  end
  for round = 1, 3 do
    local resp, err = self.conn:unary("VolumePutFiles2", request, {base_delay = 1})
    if not resp then
      if err.grpc_status == "ALREADY_EXISTS" then
        err.reason = "already_exists"
        err.message = err.message .. ": a file exists in Modal volume '" .. self.name .. "' (upload with force = true to replace it)"
      end
      return nil, err
    end
    if #resp.missing_blocks == 0 then
      progress(total - reported)   -- blocks the server had already count as done
      return true
    end
    if round == 3 then
      return fail(("uploading to Modal volume '%s': the server still lacks %d blocks after they were sent")
                  :format(self.name, #resp.missing_blocks))
    end
    local sem, first_err = sched.semaphore(opts.parallel or M.PARALLEL), nil
    sched.scope(function(scope)
      for _, mb in ipairs(resp.missing_blocks) do
        sem:acquire()
        if first_err then sem:release() break end
        scope:spawn(function()
          local item = items[mb.file_index + 1]
          local data, rerr = read_block(item.src, mb.block_index + 1)
          local body
          if data then
            body, rerr = put_block(mb.put_url, strip_zeros(data),
              ("uploading block %d of '%s' to Modal volume '%s'"):format(mb.block_index + 1, item.dest, self.name))
          end
          sem:release()
          if not body then
            first_err = first_err or errors.new("modal", errors.message(rerr), {reason = "volume"})
            return
          end
          files[mb.file_index + 1].blocks[mb.block_index + 1].put_response = body
          opts.sent = (opts.sent or 0) + #data
          progress(#data)
        end)
      end
    end)
    if first_err then return nil, first_err end
  end
end

-- Uploads a local file or folder to remote_path in the volume (a folder's contents go under
-- remote_path). opts: force (replace existing files; default true), on_progress(bytes),
-- parallel. Returns {files =, bytes =, sent = bytes of the blocks actually PUT (0 when the
-- server had them all)} or nil, err.
function Volume:put(local_path, remote_path, opts)
  opts = opts or {}
  local o = {force = opts.force ~= false, on_progress = opts.on_progress, parallel = opts.parallel, sent = 0}
  if self.version ~= 2 then
    return fail(("Modal volume '%s' is a v1 volume: runbox uploads only to v2 volumes (create a new volume)"):format(self.name))
  end
  local st = fs.stat(local_path)
  if not st then return fail(("cannot upload '%s': no such file or folder"):format(local_path)) end
  local items = {}
  local dest = clean(remote_path)
  if st.type == "file" then
    items[1] = {src = local_path, dest = dest ~= "" and dest or local_path:match("[^/]+$"), size = st.size, mode = st.mode & 4095}
  elseif st.type == "dir" then
    local entries, err = fs.walk(local_path)
    if not entries then return nil, err end
    for _, e in ipairs(entries) do
      if e.type == "file" then
        local est = fs.stat(local_path .. "/" .. e.path)
        items[#items + 1] = {src = local_path .. "/" .. e.path, dest = dest ~= "" and dest .. "/" .. e.path or e.path,
                             size = est and est.size or 0, mode = est and (est.mode & 4095)}
      end
    end
  else
    return fail(("cannot upload '%s': it is a %s"):format(local_path, st.type))
  end
  local bytes = 0
  for _, it in ipairs(items) do bytes = bytes + it.size end
  for i = 1, #items, M.BATCH do
    local batch = table.move(items, i, math.min(i + M.BATCH - 1, #items), 1, {})
    local ok, err = self:_put_batch(batch, o)
    if not ok then return nil, err end
  end
  return {files = #items, bytes = bytes, sent = o.sent}
end

-- Writes data as the file remote_path (replacing it unless opts.force == false).
function Volume:put_bytes(data, remote_path, opts)
  local tmp = os.tmpname()
  local ok, err = fs.write(tmp, data)
  if not ok then os.remove(tmp) return nil, err end
  local r
  r, err = self:put(tmp, remote_path, opts)
  os.remove(tmp)
  if not r then return nil, err end
  return true
end

-- Removes a file (or a folder with opts.recursive). Returns true or nil, err.
function Volume:remove(path, opts)
  opts = opts or {}
  local method = self.version == 2 and "VolumeRemoveFile2" or "VolumeRemoveFile"
  local resp, err = self.conn:unary(method, {volume_id = self.id, path = clean(path), recursive = opts.recursive or false})
  if not resp then
    return self:_missing(path, err)
  end
  return true
end

-- Commits the volume's changes (VolumeCommit, retried up to 90 times as the Python client does),
-- then reloads it unless the server says there is no need.
function Volume:commit()
  local resp, err = self.conn:unary("VolumeCommit", {volume_id = self.id}, {retries = 90})
  if not resp then return nil, err end
  if not resp.skip_reload then
    local ok, rerr = self.conn:unary("VolumeReload", {volume_id = self.id})
    if not ok then return nil, rerr end
  end
  return true
end

M.Volume = Volume
return M
