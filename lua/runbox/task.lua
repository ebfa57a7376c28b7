-- The task model: load a created or prepared OneShot task folder, validate its tb_meta.json with
-- errors that name the file and the field, resolve the instructions, and turn a created task into
-- a prepared one (task.prepare, in runbox.task.prepare).
local fs = require "runbox.fs"
local json = require "runbox.json"
local errors = require "runbox.errors"
local defaults = require "runbox.task.defaults"

local M = {}

---------------------------------------------------------------------------------------------------
-- small helpers

-- Validation raises a "task" error; the public functions turn it into nil, err.
local function fail(file, field, message, fields)
  local e = fields or {}
  e.path, e.field = file, field
  local where = field and (file .. ": " .. field) or file
  errors.raise("task", where .. ": " .. message, e)
end

local function absent(v) return v == nil or v == json.null end

local function describe(v)
  if v == json.null then return "null" end
  local ty = type(v)
  if ty == "string" then return ("the string %q"):format(#v > 40 and v:sub(1, 37) .. "..." or v) end
  if ty == "number" then return "the number " .. tostring(v) end
  if ty == "boolean" then return tostring(v) end
  if ty == "table" then return json.is_array(v) and "a list" or "an object" end
  return ty
end

local function is_object(v) return type(v) == "table" and not json.is_array(v) end
local function is_list(v) return type(v) == "table" and (json.is_array(v) or next(v) == nil) end

-- Reads one field that must be absent or have the given kind ("string", "object", "list",
-- "boolean", "number"); returns it or nil.
local function field_of(file, tbl, key, path, kind, hint)
  local v = tbl[key]
  if absent(v) then return nil end
  local ok = (kind == "object" and is_object(v)) or (kind == "list" and is_list(v))
      or (kind ~= "object" and kind ~= "list" and type(v) == kind)
  if not ok then
    local want = ({object = "an object", list = "a list", boolean = "true or false"})[kind] or ("a " .. kind)
    fail(file, path, ("expected %s, got %s%s"):format(want, describe(v), hint and ("; " .. hint) or ""))
  end
  return v
end

-- The prepared name: a task id without its creation time suffix _YYYYMMDD_HHMMSS.
function M.name_of(id)
  if type(id) ~= "string" then error("bad argument #1 to 'name_of' (string expected)", 2) end
  local base = id:match("^(.-)_%d%d%d%d%d%d%d%d_%d%d%d%d%d%d$")
  if base and base ~= "" then return base end
  return id
end

-- Lexical normalisation of an absolute path: no ".", "..", or repeated slashes.
local function normalize(path)
  local parts = {}
  for p in path:gmatch("[^/]+") do
    if p == ".." then parts[#parts] = nil
    elseif p ~= "." then parts[#parts + 1] = p end
  end
  return "/" .. table.concat(parts, "/")
end

-- How git reads a repository location: "scheme://..." is a URL, "host:path" with no slash before
-- the colon is scp-like ssh, anything else a local path. Relative local paths are taken relative
-- to the task folder. Returns the URL to clone and, for local repositories, their path.
local function resolve_url(url, dir)
  local scheme = url:match("^(%a[%w+.-]*)://")
  if scheme then
    if scheme:lower() == "file" then return url, url:match("^%a+://(/.*)$") end
    return url, nil
  end
  local colon, slash = url:find(":", 1, true), url:find("/", 1, true)
  if colon and (not slash or colon < slash) then return url, nil end
  local path = url:sub(1, 1) == "/" and normalize(url) or normalize(dir .. "/" .. url)
  return path, path
end
M.resolve_url = resolve_url

---------------------------------------------------------------------------------------------------
-- tb_meta.json fields

local function check_id(file, meta)
  local key = absent(meta.task_id) and "id" or "task_id"
  local id = field_of(file, meta, key, key, "string")
  if not id or id == "" then
    fail(file, id and key or "task_id", (id and "empty" or "missing")
         .. "; add \"task_id\": \"my-task\" (the older \"id\" works too)")
  end
  local name = M.name_of(id)
  local bad = (name:find("/", 1, true) and "contains '/'") or (name:find("%c") and "contains a control character")
      or (name:sub(1, 1) == "." and "starts with '.'") or (#name > 200 and "is longer than 200 bytes")
  if bad then
    fail(file, key, ("'%s' cannot name a folder (it %s); use letters, digits, '-', '_' and '.'"):format(id, bad))
  end
  return id, name
end

local function check_title(file, meta)
  local md = field_of(file, meta, "metadata", "metadata", "object")
  local title = md and field_of(file, md, "title", "metadata.title", "string")
  if not title then title = field_of(file, meta, "title", "title", "string") end   -- the old flat format
  if not title or not title:match("%S") then
    fail(file, "metadata.title", (title and "empty" or "missing")
         .. "; add \"metadata\": {\"title\": \"a one-line summary of the task\"}")
  end
  return title
end

-- A value that git would read as an option, or that holds a line break, is never a location or ref.
local function check_git_word(file, path, v, what)
  if v:sub(1, 1) == "-" then fail(file, path, ("'%s' starts with '-'; give a %s"):format(v, what)) end
  if v:find("%c") then fail(file, path, ("contains a control character; give a %s"):format(what)) end
end

local function check_repo(file, meta, dir)
  local r, base, url_key, start_key, branch_key
  if not absent(meta.repo) then
    r = field_of(file, meta, "repo", "repo", "object")
    base, url_key, start_key, branch_key = "repo", "git_url", "start_commit_sha", "branch"
  elseif not absent(meta.repository) then
    r = field_of(file, meta, "repository", "repository", "object")
    base, start_key, branch_key = "repository", "commit", "branch"
    url_key = (absent(r.clone_url) and not absent(r.url)) and "url" or "clone_url"
  else
    fail(file, "repo", "missing; add \"repo\": {\"git_url\": \"https://...\" (or a local path), "
         .. "\"start_commit_sha\": \"...\"} (the older \"repository\": {\"clone_url\": ...} works too)")
  end
  local url = field_of(file, r, url_key, base .. "." .. url_key, "string")
  if not url or not url:match("%S") then
    fail(file, base .. "." .. url_key, (url and "empty" or "missing")
         .. "; set it to a location git can clone: https://..., ssh (git@host:path), file:///... or a path")
  end
  check_git_word(file, base .. "." .. url_key, url, "repository location git can clone")
  local branch = field_of(file, r, branch_key, base .. "." .. branch_key, "string")
  if branch == "" then branch = nil end
  if branch then check_git_word(file, base .. "." .. branch_key, branch, "branch name") end
  local start = field_of(file, r, start_key, base .. "." .. start_key, "string")
  if not start or start == "" then start = "HEAD" end
  check_git_word(file, base .. "." .. start_key, start, "commit sha")
  local finish
  if base == "repo" then
    finish = field_of(file, r, "end_commit_sha", "repo.end_commit_sha", "string")
    if finish == "" then finish = nil end
  end
  local clone_url, local_path = resolve_url(url, dir)
  return {url = clone_url, git_url = url, branch = branch, start_commit = start, end_commit = finish,
          local_path = local_path, field = base .. "." .. url_key,
          start_field = base .. "." .. start_key, key = base, url_key = url_key}
end

local function check_network(file, meta)
  local sb = field_of(file, meta, "sandbox", "sandbox", "object")
  local net = sb and field_of(file, sb, "network", "sandbox.network", "boolean",
                              "write true or false (false: the sandbox has no network)")
  return net ~= false
end

local function check_instructions(file, meta, kind, dir)
  local lm = field_of(file, meta, "lm", "lm", "object")
  local text = lm and field_of(file, lm, "instructions", "lm.instructions", "string")
  local path = (kind == "prepared" and dir .. "/overlay_files" or dir) .. "/LM_INSTRUCTIONS.md"
  local data, err = fs.read(path)
  if data and data:match("%S") then return data, path end
  if not data and err.reason ~= "not_found" then
    errors.raise("task", ("%s: cannot read it (%s); fix its permissions"):format(path, err.reason), {path = path})
  end
  if text and text:match("%S") then return text, nil end
  fail(file, "lm.instructions", ("no instructions: %s is %s and lm.instructions is %s; write the "
       .. "agent's prompt into one of them"):format(path, data and "empty" or "missing",
       text and "empty" or "missing"))
end

---------------------------------------------------------------------------------------------------
-- evaluation: rubrics and test scripts

local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end

local function check_rubric(file, r, path)
  if not is_object(r) then fail(file, path, "expected an object {id, criterion, weight}, got " .. describe(r)) end
  local id = field_of(file, r, "id", path .. ".id", "string")
  if not id or id == "" then
    fail(file, path .. ".id", (id and "empty" or "missing") .. "; give each rubric an id that "
         .. "test_scripts[].rubric_id can refer to")
  end
  local crit = field_of(file, r, "criterion", path .. ".criterion", "string")
  local w = r.weight
  if absent(w) then fail(file, path .. ".weight", "missing; give the rubric's weight as a number such as 0.5") end
  if type(w) ~= "number" then
    fail(file, path .. ".weight", ("expected a number, got %s; write the weight as a number such as 0.5, "
         .. "without quotes"):format(describe(w)))
  end
  if w < 0 then fail(file, path .. ".weight", ("%s is negative; weights are 0 or more"):format(tostring(w))) end
  local out = copy(r)
  out.id, out.criterion, out.weight = id, crit or "", w
  return out
end

-- A test script's path, normalised; it must stay inside the repository.
local function check_script_path(file, p, path)
  if not p or p == "" then
    fail(file, path, (p and "empty" or "missing") .. "; give the test file's path relative to the "
         .. "repository root, e.g. tests/test_feature.py")
  end
  if p:sub(1, 1) == "/" then
    fail(file, path, ("'%s' is absolute; give a path relative to the repository root, e.g. "
         .. "tests/test_feature.py"):format(p))
  end
  if p:find("\\", 1, true) or p:find("%c") then
    fail(file, path, ("'%s' contains a backslash or a control character; use '/' between folders"):format(p))
  end
  local parts = {}
  for part in p:gmatch("[^/]+") do
    if part == ".." then
      fail(file, path, ("'%s' contains '..'; test scripts must stay inside the repository"):format(p))
    end
    if part ~= "." then parts[#parts + 1] = part end
  end
  if #parts == 0 or p:sub(-1) == "/" then fail(file, path, ("'%s' names a folder, not a file"):format(p)) end
  if parts[1] == ".git" then fail(file, path, ("'%s' is inside .git; put test scripts in the work tree"):format(p)) end
  return table.concat(parts, "/")
end

local function check_script(file, s, path)
  if not is_object(s) then
    fail(file, path, "expected an object {path, rubric_id, content}, got " .. describe(s))
  end
  local p = check_script_path(file, field_of(file, s, "path", path .. ".path", "string"), path .. ".path")
  local rid = field_of(file, s, "rubric_id", path .. ".rubric_id", "string")
  if not rid or rid == "" then
    fail(file, path .. ".rubric_id", (rid and "empty" or "missing") .. "; name the rubric this test scores")
  end
  local content = field_of(file, s, "content", path .. ".content", "string")
  if not content then fail(file, path .. ".content", "missing; put the test file's Python source here") end
  local out = copy(s)
  out.path, out.rubric_id, out.content = p, rid, content
  return out
end

-- The created format's content/location/clarity lists become rubrics: a string is a criterion,
-- an object may give id, criterion (or description) and weight; ids default to <kind>_<n>, weights to 1.
local LEGACY = {"content", "location", "clarity"}

local function convert_legacy(file, ev)
  local out = {}
  for _, kind in ipairs(LEGACY) do
    local key = kind .. "_rubric"
    local list = field_of(file, ev, key, "evaluation." .. key, "list")
    for i, entry in ipairs(list or {}) do
      local path = ("evaluation.%s[%d]"):format(key, i - 1)
      local r
      if type(entry) == "string" then
        r = {id = kind .. "_" .. i, criterion = entry, weight = 1}
      elseif is_object(entry) then
        r = copy(entry)
        if absent(r.id) then r.id = kind .. "_" .. i end
        if absent(r.criterion) and type(r.description) == "string" then r.criterion = r.description end
        if absent(r.weight) then r.weight = 1 end
      else
        fail(file, path, "expected a criterion (a string) or an object {id, criterion, weight}, got " .. describe(entry))
      end
      out[#out + 1] = check_rubric(file, r, path)
      out[#out]._field = path
    end
  end
  return out
end

local function check_unique_rubrics(file, rubrics)
  local seen = {}
  for _, r in ipairs(rubrics) do
    if seen[r.id] then
      fail(file, r._field .. ".id", ("duplicate id '%s' (also %s); rubric ids must be unique"):format(r.id, seen[r.id]))
    end
    seen[r.id] = r._field
  end
  return seen
end

-- Rubrics and test scripts. A created task's evaluation is converted as `runbox prepare` does:
-- content/location/clarity entries become rubrics, and a task without test scripts gets the
-- default rubrics and tests of runbox.task.defaults.
local function check_evaluation(file, meta, kind, reference_patch, start)
  local ev = field_of(file, meta, "evaluation", "evaluation", "object") or {}
  local rubrics = {}
  for i, r in ipairs(field_of(file, ev, "rubrics", "evaluation.rubrics", "list") or {}) do
    local path = ("evaluation.rubrics[%d]"):format(i - 1)
    rubrics[#rubrics + 1] = check_rubric(file, r, path)
    rubrics[#rubrics]._field = path
  end
  if kind == "created" then
    for _, r in ipairs(convert_legacy(file, ev)) do rubrics[#rubrics + 1] = r end
  end
  local scripts, paths = {}, {}
  for i, s in ipairs(field_of(file, ev, "test_scripts", "evaluation.test_scripts", "list") or {}) do
    local path = ("evaluation.test_scripts[%d]"):format(i - 1)
    local c = check_script(file, s, path)
    if paths[c.path] then
      fail(file, path .. ".path", ("duplicate path '%s' (also %s); each test script needs its own file")
           :format(c.path, paths[c.path]))
    end
    paths[c.path] = path
    c._field = path
    scripts[#scripts + 1] = c
  end
  if kind == "created" and #scripts == 0 then
    local files = {}
    if reference_patch then
      local patch, err = fs.read(reference_patch)
      if not patch then
        errors.raise("task", ("%s: cannot read it (%s); fix its permissions"):format(reference_patch, err.reason),
                     {path = reference_patch})
      end
      files = defaults.touched_files(patch)
    end
    local drubrics, dscripts = defaults.evaluation(files, start)
    for _, d in ipairs(drubrics) do
      for _, r in ipairs(rubrics) do
        if r.id == d.id then
          fail(file, r._field .. ".id", ("'%s' is the id of a default rubric runbox adds to a task without "
               .. "test scripts; choose another id"):format(r.id))
        end
      end
    end
    for _, r in ipairs(drubrics) do r._field = "runbox default"; rubrics[#rubrics + 1] = r end
    for _, s in ipairs(dscripts) do s._field = "runbox default"; scripts[#scripts + 1] = s end
  end
  local ids = check_unique_rubrics(file, rubrics)
  for _, s in ipairs(scripts) do
    if not ids[s.rubric_id] then
      local known = {}
      for _, r in ipairs(rubrics) do known[#known + 1] = r.id end
      fail(file, s._field .. ".rubric_id", ("'%s' is not the id of any rubric (known: %s); fix the id or add "
           .. "the rubric to evaluation.rubrics"):format(s.rubric_id, #known > 0 and table.concat(known, ", ") or "none"))
    end
  end
  for _, r in ipairs(rubrics) do r._field = nil end
  for _, s in ipairs(scripts) do s._field = nil end
  return rubrics, scripts, ev
end

---------------------------------------------------------------------------------------------------
-- loading

local function read_meta(file)
  local text, err = fs.read(file)
  if not text then
    if err.reason == "not_found" then
      errors.raise("task", file .. ": not found; a task folder needs a tb_meta.json with task_id, "
                   .. "metadata.title, repo and evaluation (see docs/api/task.md)", {path = file})
    end
    errors.raise("task", ("%s: cannot read it: %s"):format(file, tostring(err)), {path = file})
  end
  local meta, jerr = json.decode(text)
  if meta == nil then
    errors.raise("task", ("%s: %s; fix the JSON syntax there"):format(file, tostring(jerr)),
                 {path = file, line = jerr.line, column = jerr.column})
  end
  if not is_object(meta) then
    errors.raise("task", ("%s: expected a JSON object at the top, got %s"):format(file, describe(meta)), {path = file})
  end
  return meta
end

local function load_task(dir)
  local st = fs.stat(dir)
  if not st then
    errors.raise("task", ("task folder '%s' does not exist; give the path of a folder that holds "
                 .. "tb_meta.json"):format(dir), {path = dir})
  end
  if st.type ~= "dir" then
    errors.raise("task", ("'%s' is not a folder; give the task folder (the one that holds "
                 .. "tb_meta.json)"):format(dir), {path = dir})
  end
  dir = assert(fs.realpath(dir))
  local of = fs.stat(dir .. "/overlay_files")
  local kind = of and of.type == "dir" and "prepared" or "created"
  local file = dir .. "/tb_meta.json"
  local meta = read_meta(file)
  local t = {kind = kind, dir = dir, meta = meta, meta_file = file}
  t.id, t.name = check_id(file, meta)
  t.title = check_title(file, meta)
  t.repo = check_repo(file, meta, dir)
  t.network = check_network(file, meta)
  t.instructions, t.instructions_file = check_instructions(file, meta, kind, dir)
  local patch = (kind == "prepared" and dir .. "/overlay_files" or dir) .. "/diff.patch"
  t.reference_patch = fs.exists(patch) and patch or nil
  t.rubrics, t.test_scripts = check_evaluation(file, meta, kind, t.reference_patch, t.repo.start_commit)
  return t
end

-- Runs fn(...), turning a raised "task" error into nil, err; other errors propagate.
local function guarded(fn, ...)
  local ok, a = pcall(fn, ...)
  if ok then return a end
  if errors.is(a, "task") then return nil, a end
  error(a, 0)
end
M.guarded = guarded

-- task.load(dir) -> task | nil, err
function M.load(dir)
  if type(dir) ~= "string" then error("bad argument #1 to 'load' (task folder path expected)", 2) end
  return guarded(load_task, dir)
end

-- Folders directly under root that hold a tb_meta.json, sorted by name (absolute paths).
function M.discover(root)
  if type(root) ~= "string" then error("bad argument #1 to 'discover' (folder path expected)", 2) end
  local names, err = fs.list(root)
  if not names then return nil, errors.new("task", ("cannot list task folder '%s': %s"):format(root, errors.message(err)), {path = root}) end
  local abs = assert(fs.realpath(root))
  local out = {}
  for _, n in ipairs(names) do
    local st = fs.stat(abs .. "/" .. n .. "/tb_meta.json")
    if n:sub(1, 1) ~= "." and st and st.type == "file" then out[#out + 1] = abs .. "/" .. n end
  end
  return out
end

---------------------------------------------------------------------------------------------------
-- the prepared tb_meta (also what task.prepare writes)

-- The tb_meta table of the prepared form: evaluation as rubrics + test_scripts, the created
-- format's lists dropped, and a relative local repository path made absolute (the prepared task
-- lives in another folder).
function M.prepared_meta(t)
  local meta = copy(t.meta)
  local ev = is_object(meta.evaluation) and copy(meta.evaluation) or {}
  for _, kind in ipairs(LEGACY) do ev[kind .. "_rubric"] = nil end
  ev.rubrics, ev.test_scripts = json.array(), json.array()
  for i, r in ipairs(t.rubrics) do ev.rubrics[i] = r end
  for i, s in ipairs(t.test_scripts) do ev.test_scripts[i] = s end
  meta.evaluation = ev
  if t.repo.local_path and t.repo.url ~= t.repo.git_url then
    local r = copy(meta[t.repo.key])
    r[t.repo.url_key] = t.repo.url
    meta[t.repo.key] = r
  end
  return meta
end

function M.prepare(created_dir, opts)
  if type(created_dir) ~= "string" then error("bad argument #1 to 'prepare' (created task folder expected)", 2) end
  if opts ~= nil and type(opts) ~= "table" then error("bad argument #2 to 'prepare' (table expected)", 2) end
  return require("runbox.task.prepare").prepare(M, created_dir, opts or {})
end

-- The files a run puts at /app: {{name, content}...}, the prepared task's overlay_files (for a
-- created task made in memory, as `prepare` would write them), or nil, err. opts: skip = {[name]
-- = true} files left out (not even read), drop = keys left out of tb_meta.json.
function M.overlay_files(t, opts)
  if type(t) ~= "table" or not t.dir then error("bad argument #1 to 'overlay_files' (task expected)", 2) end
  if t.kind == "created" then
    local files, err = require("runbox.task.prepare").files_of(M, t, opts)
    if not files then return nil, err end
    local out = {}
    for _, f in ipairs(files) do
      local name = f[1]:match("^overlay_files/(.+)$")
      if name then out[#out + 1] = {name, f[2]} end
    end
    return out
  end
  return nil, errors.new("task", "a prepared task's files are its overlay_files folder: copy " .. t.dir .. "/overlay_files")
end

-- task.clone(t, dest [, {timeout = 600}]) -> true | nil, err (in runbox.task.clone)
function M.clone(t, dest, opts)
  if type(t) ~= "table" or not t.repo then error("bad argument #1 to 'clone' (task expected)", 2) end
  if type(dest) ~= "string" then error("bad argument #2 to 'clone' (destination folder expected)", 2) end
  if opts ~= nil and type(opts) ~= "table" then error("bad argument #3 to 'clone' (table expected)", 2) end
  return require("runbox.task.clone").clone(t, dest, opts or {})
end

return M
