-- task.clone: the task's repository at its start commit, on this machine. git never prompts (no
-- terminal, no askpass, ssh in batch mode), and errors name the tb_meta.json field at fault.
local fs = require "runbox.fs"
local errors = require "runbox.errors"
local proc = require "runbox.proc"

local M = {}

local GIT_ENV = {GIT_TERMINAL_PROMPT = "0", GIT_ASKPASS = "true", SSH_ASKPASS = "true"}

local function git(args, opts)
  local cmd = {"git"}
  for _, a in ipairs(args) do cmd[#cmd + 1] = a end
  cmd.env = GIT_ENV
  if not os.getenv("GIT_SSH_COMMAND") then
    cmd.env = {GIT_SSH_COMMAND = "ssh -o BatchMode=yes"}
    for k, v in pairs(GIT_ENV) do cmd.env[k] = v end
  end
  cmd.cwd, cmd.timeout = opts.cwd, opts.timeout
  local r, err = proc.run(cmd)
  if not r then return nil, err end
  return r
end

local function last_line(s)
  local last
  for line in s:gmatch("[^\n]+") do if line:match("%S") then last = line end end
  return last or "(no output)"
end

-- Clones t's repository into dest (which must not exist or be empty) and checks out the start
-- commit: on the task's branch (moved to the start commit) when tb_meta names one, else detached.
function M.clone(t, dest, opts)
  local timeout = opts.timeout or 600
  local names = fs.list(dest)
  if names and #names > 0 then
    return nil, errors.new("task", ("cannot clone into '%s': the folder is not empty"):format(dest), {path = dest})
  end
  local r, err = git({"clone", "--quiet", "--", t.repo.url, dest}, {timeout = timeout})
  if not r then return nil, err end
  if r.code ~= 0 then
    return nil, errors.new("task", ("%s: %s: cannot clone '%s': %s; check the location and that it is reachable")
                           :format(t.meta_file, t.repo.field, t.repo.url, r.timed_out and "timed out" or last_line(r.stderr)),
                           {path = t.meta_file, field = t.repo.field})
  end
  local start, branch = t.repo.start_commit, t.repo.branch
  local target = start
  if start == "HEAD" and branch then target = "refs/remotes/origin/" .. branch end
  local args = branch and {"checkout", "--quiet", "-B", branch, target .. "^{commit}", "--"}
      or {"checkout", "--quiet", "--detach", target .. "^{commit}", "--"}
  r, err = git(args, {cwd = dest, timeout = timeout})
  if not r or r.code ~= 0 then
    -- leave dest as it was: absent, or an empty folder
    fs.remove_tree(dest)
    if names then fs.mkdir_p(dest) end
  end
  if not r then return nil, err end
  if r.code ~= 0 then
    local field = start == "HEAD" and t.repo.key .. ".branch" or t.repo.start_field
    local what = start == "HEAD" and ("branch '%s'"):format(branch) or ("commit '%s'"):format(start)
    return nil, errors.new("task", ("%s: %s: %s not found in '%s' (%s); give a commit or branch that exists there")
                           :format(t.meta_file, field, what, t.repo.url, last_line(r.stderr)),
                           {path = t.meta_file, field = field})
  end
  return true
end

return M
