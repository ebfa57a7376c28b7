-- task.prepare: write the prepared form of a created task into OUT/<name>. A new folder is built
-- next to the target under a hidden name and renamed into place; an existing one is updated file
-- by file (each write atomic, unchanged files untouched), and nothing else in it is removed.
local fs = require "runbox.fs"
local json = require "runbox.json"
local util = require "runbox.util"
local errors = require "runbox.errors"

local M = {}

-- Files copied from the created task's root into overlay_files/ when present.
M.overlay = {"LM_INSTRUCTIONS.md", "repo_info.json", "diff.patch", "notes.md"}

-- The prepared task's files as {relative path, content} pairs (tb_meta.json and overlay_files/).
-- opts (for a run's view of them): skip = {[name] = true} overlay files not to read at all,
-- drop = keys of tb_meta.json left out.
local function files_of(task, t, opts)
  local prepared = task.prepared_meta(t)
  for _, key in ipairs(opts and opts.drop or {}) do prepared[key] = nil end
  local meta = json.pretty(prepared) .. "\n"
  local files = {{"tb_meta.json", meta}, {"overlay_files/tb_meta.json", meta}}
  local skip = opts and opts.skip or {}
  for _, name in ipairs(M.overlay) do
    if not skip[name] then
      local path = t.dir .. "/" .. name
      local data, err
      if path == t.instructions_file then data = t.instructions   -- read once, at load
      else data, err = fs.read(path) end
      if data then
        files[#files + 1] = {"overlay_files/" .. name, data}
      elseif err.reason ~= "not_found" then
        return nil, errors.new("task", ("%s: cannot read it (%s); fix its permissions"):format(path, err.reason),
                               {path = path})
      end
    end
  end
  return files
end

local function write_error(path, err)
  return errors.new("task", ("cannot write the prepared task: %s"):format(tostring(err)), {path = path})
end

local function parent(path) return path:match("^(.*)/[^/]*$") end

-- Writes the files under dir; a file whose content is already right is left alone. In an
-- existing folder each write is atomic; a fresh hidden one is renamed into place as a whole, so
-- plain writes do there.
local function update(dir, files, fresh)
  local write = fresh and fs.write or fs.write_atomic
  for _, f in ipairs(files) do
    local path = dir .. "/" .. f[1]
    local ok, err = fs.mkdir_p(parent(path))
    if not ok then return nil, write_error(path, err) end
    if fresh or fs.read(path) ~= f[2] then
      ok, err = write(path, f[2])
      if not ok then return nil, write_error(path, err) end
    end
  end
  return true
end

-- Builds the whole folder under a hidden temporary name in root, then renames it to target.
local function create(root, name, target, files)
  local tmp = ("%s/.%s.prepare-%s"):format(root, name, util.random_hex(8))
  local ok, err = fs.mkdir_p(tmp)
  if not ok then return nil, write_error(tmp, err) end
  ok, err = update(tmp, files, true)
  if ok then
    local renamed, rerr = fs.rename(tmp, target)
    if not renamed then
      -- someone made the target meanwhile: fill it in like an existing one
      if fs.stat(target) then ok, err = update(target, files) else ok, err = nil, write_error(target, rerr) end
    end
  end
  if fs.exists(tmp) then fs.remove_tree(tmp) end
  return ok, err
end

M.files_of = files_of

function M.prepare(task, created_dir, opts)
  local t, err = task.load(created_dir)
  if not t then return nil, err end
  if t.kind ~= "created" then
    return nil, errors.new("task", ("'%s' is a prepared task already (it has overlay_files/); run it as it is, "
                           .. "or give the created task folder"):format(t.dir), {path = t.dir})
  end
  local files
  files, err = files_of(task, t)
  if not files then return nil, err end
  local out = opts.out or "data/tasks/prepared"
  local ok, merr = fs.mkdir_p(out)
  if not ok then
    return nil, errors.new("task", ("cannot make the output folder '%s': %s"):format(out, tostring(merr)), {path = out})
  end
  local root = assert(fs.realpath(out))
  local target = root .. "/" .. t.name
  if target == t.dir then
    return nil, errors.new("task", ("the prepared task would replace the created task '%s' itself; choose another "
                           .. "output folder"):format(t.dir), {path = target})
  end
  local st = fs.stat(target)
  if st and st.type ~= "dir" then
    return nil, errors.new("task", ("'%s' exists and is not a folder; move it away or choose another output folder")
                           :format(target), {path = target})
  end
  if st and fs.exists(target .. "/tb_meta.json") and not fs.exists(target .. "/overlay_files") then
    return nil, errors.new("task", ("'%s' is a created task, not a prepared one; choose another output folder")
                           :format(target), {path = target})
  end
  if st then ok, err = update(target, files) else ok, err = create(root, t.name, target, files) end
  if not ok then return nil, err end
  return target
end

return M
