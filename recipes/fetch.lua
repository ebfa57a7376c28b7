-- runbox fetch list | runbox fetch RUN_ID [-o DIR] [--force]: the run folders of the Modal volume
-- codex-artifacts (with each run's status), and one run's files downloaded into
-- data/runs/<run_id>/ with no extra level, never overwriting a file without --force.
-- See docs/api/recipes-modal.md.
local cli = require "runbox.cli"
local fs = require "runbox.fs"
local json = require "runbox.json"
local sched = require "runbox.sched"
local progress = require "runbox.progress"
local modal = require "runbox.modal"

local VOLUME = "codex-artifacts"
local PARALLEL = 8                       -- files read or downloaded at once
local PROGRESS_MIN = 4 * 1024 * 1024     -- downloads from this size on show a progress line
local STATUS_FILES = {"results.json", "completion.json"}   -- runbox's, then the original runner's

local spec = {
  name = "fetch",
  usage = "runbox fetch list | runbox fetch RUN_ID [-o DIR] [--force]",
  summary = "List the runs stored in the Modal volume " .. VOLUME .. ", or download one run's files into\n"
         .. "data/runs/<run_id>/ (its contents directly, no extra level).",
  positional = {{name = "what", metavar = "list|RUN_ID", help = "`list`, or the run to download"}},
  flags = {
    {name = "output", short = "o", value = "DIR", help = "download into DIR (default: data/runs/<run_id>)"},
    {name = "force", help = "overwrite files that already exist there"},
  },
  epilog = "Modal credentials: MODAL_TOKEN_ID and MODAL_TOKEN_SECRET, or ~/.modal.toml (`modal token new`).",
}

local function usage_exit(message)
  io.stderr:write(message, "\n\n", cli.help(spec))
  os.exit(2)
end

local args, aerr = cli.parse(spec, {...})
if args and args.help then io.stdout:write(cli.help(spec)) os.exit(0) end
if not args then usage_exit(tostring(aerr)) end

local function say(fmt, ...) io.stdout:write(fmt:format(...), "\n") io.stdout:flush() end
local function fail(fmt, ...)
  io.stderr:write("runbox fetch: ", fmt:format(...), "\n")
  os.exit(1)
end

---------------------------------------------------------------------------------------------------
-- a run's status, from runbox's results.json or the original runner's completion.json

local function num(v) return type(v) == "number" and v or nil end

-- {status =, score = 0..1 | nil, passed =, failed =, tests_ok = bool | nil, time =, file =}
local function status_of(name, doc)
  if type(doc) ~= "table" then return {status = "unreadable", file = name} end
  if name == "results.json" then
    local tests = type(doc.tests) == "table" and doc.tests or {}
    return {status = type(doc.status) == "string" and doc.status or "unknown", score = num(doc.score),
            passed = num(tests.passed), failed = num(tests.failed), time = doc.end_time, file = name}
  end
  local ev = type(doc.evaluation_results) == "table" and doc.evaluation_results or {}
  local status = doc.completed == true and "completed" or "incomplete"
  if doc.agent_exit_code == 2 then status = "timeout" end
  local score = type(ev.evaluation) == "table" and num(ev.evaluation.total_score) or num(ev.total_score)
  return {status = status, score = score, tests_ok = type(ev.passed) == "boolean" and ev.passed or nil,
          time = doc.timestamp, file = name}
end

local function pct(score) return score and ("%d%%"):format(math.floor(score * 100 + 0.5)) or "-" end

local function short_tests(st)
  if st.passed and st.failed then return ("%d/%d"):format(st.passed, st.passed + st.failed) end
  if st.tests_ok ~= nil then return st.tests_ok and "passed" or "failed" end
  return "-"
end

local function long_status(st)
  local parts = {st.status}
  if st.score then parts[#parts + 1] = "score " .. pct(st.score) end
  if st.passed and st.failed then parts[#parts + 1] = ("tests %d passed, %d failed"):format(st.passed, st.failed)
  elseif st.tests_ok ~= nil then parts[#parts + 1] = "evaluation " .. (st.tests_ok and "passed" or "failed") end
  if type(st.time) == "string" then parts[#parts + 1] = "at " .. st.time end
  return table.concat(parts, ", ") .. " (from " .. st.file .. ")"
end

-- Reads one status file of the volume: its status or nil.
local function read_status(vol, path, name)
  local data = vol:read(path)
  if not data then return nil end
  return status_of(name, json.decode(data))
end

---------------------------------------------------------------------------------------------------

local function open_volume()
  local c, err = modal.client()
  if not c then fail("%s", err.message) end
  local vol
  vol, err = c:volume(VOLUME)
  if not vol and err.reason == "not_found" then return nil end
  if not vol then fail("%s", err.message) end
  return vol
end

-- The runs of the volume: a sorted list of {name, files, bytes, mtime, has = {file = true}},
-- and the files at the volume's root (the original runner left shared files there).
local function scan(vol)
  local entries, err = vol:list("", {recursive = true})
  if not entries then fail("listing Modal volume %s: %s", VOLUME, err.message) end
  local by_name, runs, root_files = {}, {}, {}
  local function run(name)
    if not by_name[name] then
      by_name[name] = {name = name, files = 0, bytes = 0, mtime = 0, has = {}}
      runs[#runs + 1] = by_name[name]
    end
    return by_name[name]
  end
  for _, e in ipairs(entries) do
    local top, rest = e.path:match("^([^/]+)/?(.*)$")
    if top then
      if rest == "" and e.type ~= "dir" then
        root_files[#root_files + 1] = top
      else
        local r = run(top)
        r.mtime = math.max(r.mtime, e.mtime or 0)
        if e.type == "file" then
          r.files, r.bytes = r.files + 1, r.bytes + (e.size or 0)
          r.has[rest] = true
        end
      end
    end
  end
  table.sort(runs, function(a, b) return a.name < b.name end)
  return runs, root_files
end

local function fill_statuses(vol, runs)
  local sem = sched.semaphore(PARALLEL)
  sched.scope(function(scope)
    for _, r in ipairs(runs) do
      for _, name in ipairs(STATUS_FILES) do
        if r.has[name] then
          sem:acquire()
          scope:spawn(function()
            r.status = read_status(vol, r.name .. "/" .. name, name)
            sem:release()
          end)
          break
        end
      end
    end
  end)
end

local function print_table(rows)
  local widths = {}
  for _, row in ipairs(rows) do
    for i, cell in ipairs(row) do widths[i] = math.max(widths[i] or 0, #cell) end
  end
  for _, row in ipairs(rows) do
    local cells = {}
    for i, cell in ipairs(row) do
      cells[i] = i < #row and cell .. (" "):rep(widths[i] - #cell) or cell
    end
    say("%s", table.concat(cells, "  "))
  end
end

local function list()
  local vol = open_volume()
  if not vol then
    say("Modal volume %s does not exist yet: no runs stored (runs with --backend modal create it).", VOLUME)
    return
  end
  local runs, root_files = scan(vol)
  if #runs == 0 then
    say("Modal volume %s holds no runs yet.", VOLUME)
  else
    fill_statuses(vol, runs)
    say("%d run%s in Modal volume %s:", #runs, #runs == 1 and "" or "s", VOLUME)
    local rows = {{"RUN_ID", "STATUS", "SCORE", "TESTS", "FILES", "SIZE", "MODIFIED (UTC)"}}
    for _, r in ipairs(runs) do
      local st = r.status or {status = "-"}
      rows[#rows + 1] = {r.name, st.status, pct(st.score), short_tests(st), tostring(r.files),
                         progress.bytes(r.bytes), r.mtime > 0 and os.date("!%Y-%m-%d %H:%M", r.mtime) or "-"}
    end
    print_table(rows)
    say("Download one with: runbox fetch RUN_ID")
  end
  if #root_files > 0 then
    say("Files at the volume's root (not part of a run): %s", table.concat(root_files, ", "))
  end
end

---------------------------------------------------------------------------------------------------

local function unknown_run(vol, run_id)
  local runs = scan(vol)
  if #runs == 0 then fail("run '%s' is not in Modal volume %s: the volume holds no runs yet", run_id, VOLUME) end
  local names = {}
  for i = math.max(1, #runs - 19), #runs do names[#names + 1] = runs[i].name end
  fail("run '%s' is not in Modal volume %s. %s: %s (see runbox fetch list)", run_id, VOLUME,
       #runs > #names and ("The last %d of its %d runs"):format(#names, #runs) or "Runs there",
       table.concat(names, ", "))
end

-- Downloads the files (list of {remote, rel, dest, size}) next to their destination, then
-- renames each into place. Returns the bytes or nil, err.
local function download(vol, files, total, run_id)
  local bar = total >= PROGRESS_MIN and progress.new{label = "fetch " .. run_id, total = total} or nil
  local opts = {on_progress = bar and function(n) bar:add(n) end}
  local sem, first_err, bytes = sched.semaphore(PARALLEL), nil, 0
  sched.scope(function(scope)
    for _, f in ipairs(files) do
      sem:acquire()
      if first_err then sem:release() break end
      scope:spawn(function()
        local part = f.dest .. ".runbox-part"
        local n, err = vol:download(f.remote, part, opts)
        if n then
          local ok, rerr = fs.rename(part, f.dest)
          if ok then bytes = bytes + n else n, err = nil, rerr end
        end
        if not n then
          fs.remove(part)
          first_err = first_err or ("%s: %s"):format(f.rel, tostring(err and err.message or err))
        end
        sem:release()
      end)
    end
  end)
  if bar then
    if first_err then
      if bar.tty then io.stderr:write("\n") end
    else
      bar:finish()
    end
  end
  if first_err then return nil, first_err end
  return bytes
end

local function fetch(run_id)
  run_id = run_id:gsub("/+$", "")
  if run_id == "" or run_id == "." or run_id == ".." or run_id:find("/", 1, true) then
    usage_exit(("runbox fetch: '%s' is not a run id (a run id is one folder name, as runbox fetch list shows)")
               :format(run_id))
  end
  local vol = open_volume()
  if not vol then
    fail("run '%s' is not there: Modal volume %s does not exist yet (runs with --backend modal create it)", run_id, VOLUME)
  end
  local entries, err = vol:list(run_id, {recursive = true})
  if not entries and err.reason == "not_found" then unknown_run(vol, run_id) end
  if not entries then fail("listing %s in Modal volume %s: %s", run_id, VOLUME, err.message) end
  if #entries == 1 and entries[1].path == run_id and entries[1].type ~= "dir" then
    fail("'%s' is a file at the root of Modal volume %s, not a run folder (see runbox fetch list)", run_id, VOLUME)
  end

  local dest = args.output or ("data/runs/" .. run_id)
  local files, dirs, conflicts, total, has = {}, {}, {}, 0, {}
  for _, e in ipairs(entries) do
    local rel = e.path:sub(#run_id + 2)
    if rel ~= "" then
      if e.type == "file" then
        local f = {remote = e.path, rel = rel, dest = dest .. "/" .. rel, size = e.size or 0}
        files[#files + 1] = f
        total = total + f.size
        has[rel] = true
        local st = fs.lstat(f.dest)
        if st and st.type == "dir" then
          fail("%s is a folder, but the run has a file of that name: move it away first", f.dest)
        elseif st then
          conflicts[#conflicts + 1] = f.dest
        end
      elseif e.type == "dir" then
        dirs[#dirs + 1] = dest .. "/" .. rel
      end
    end
  end
  if #conflicts > 0 and not args.force then
    fail("%s already exists%s: nothing was downloaded; use --force to overwrite, or -o DIR to download elsewhere",
         conflicts[1], #conflicts > 1 and (" (and %d more of the run's files)"):format(#conflicts - 1) or "")
  end

  say("Fetching run %s from Modal volume %s into %s/ (%d files, %s)", run_id, VOLUME, dest, #files, progress.bytes(total))
  local ok, merr = fs.mkdir_p(dest)
  if not ok then fail("cannot create %s: %s", dest, tostring(merr)) end
  for _, d in ipairs(dirs) do fs.mkdir_p(d) end
  local bytes, derr = download(vol, files, total, run_id)
  if not bytes then fail("downloading run %s failed at %s (run it again with --force to finish)", run_id, derr) end

  table.sort(files, function(a, b) return a.rel < b.rel end)
  say("Fetched %d files (%s)%s:", #files, progress.bytes(bytes),
      #conflicts > 0 and (", overwrote %d"):format(#conflicts) or "")
  for i, f in ipairs(files) do
    if i > 20 then say("  ... and %d more", #files - 20) break end
    say("  %s  (%s)", f.rel, progress.bytes(f.size))
  end
  local status
  for _, name in ipairs(STATUS_FILES) do
    if has[name] then
      status = status_of(name, json.decode_file(dest .. "/" .. name))
      break
    end
  end
  say("Run status: %s", status and long_status(status) or "unknown (the run has no results.json nor completion.json)")
end

if args.what == "list" then
  if args.output or args.force then usage_exit("runbox fetch: -o/--output and --force apply to `runbox fetch RUN_ID`, not to `list`") end
  list()
else
  fetch(args.what)
end
