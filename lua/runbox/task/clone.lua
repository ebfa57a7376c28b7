-- task.clone: the task's repository at its start commit, on this machine. git never prompts (no
-- terminal, no askpass, ssh in batch mode), and errors name the tb_meta.json field at fault.
local fs = require "runbox.fs"
local errors = require "runbox.errors"
local proc = require "runbox.proc"

local M = {}

local GIT_ENV = {GIT_TERMINAL_PROMPT = "0", GIT_ASKPASS = "true", SSH_ASKPASS = "true"}

local function git_env()
  local env = {}
  for k, v in pairs(GIT_ENV) do env[k] = v end
  if not os.getenv("GIT_SSH_COMMAND") then env.GIT_SSH_COMMAND = "ssh -o BatchMode=yes" end
  return env
end

-- Clone, checkout and rev-parse in one process (a run starts one process here, not three). The
-- exit status says which step failed; values travel as arguments, never through the script text.
-- After the checkout, every ref but the task's branch and every reflog entry go: a task's repository
-- usually holds the solution commit after the start (OneShot tasks are made from a start and an
-- end commit), and the agent must not find it with `git log --all`. (Its objects stay in the pack
-- until git's next gc: a gc here would cost seconds on a big repository.)
local SCRIPT = [[
url=$1 dest=$2 target=$3 branch=$4
git clone --quiet -- "$url" "$dest" || exit 90
cd "$dest" || exit 90
if [ -n "$branch" ]; then git checkout --quiet -B "$branch" "$target^{commit}" -- || exit 91
else git checkout --quiet --detach "$target^{commit}" -- || exit 91; fi
git for-each-ref --format='delete %(refname)' | grep -vxF "delete refs/heads/$branch" | git update-ref --no-deref --stdin || exit 92
git reflog expire --expire=now --all || exit 92
git rev-parse HEAD
]]

local function last_line(s)
  local last
  for line in s:gmatch("[^\n]+") do if line:match("%S") then last = line end end
  return last or "(no output)"
end

-- The command that clones t's repository into dest and prints the commit checked out (exit 90:
-- the clone failed, 91: the start commit or branch is not there, 92: the later refs could not be
-- removed); also run inside sandboxes.
function M.argv(t, dest)
  local start, branch = t.repo.start_commit, t.repo.branch
  local target = start
  if start == "HEAD" and branch then target = "refs/remotes/origin/" .. branch end
  return {"sh", "-c", SCRIPT, "sh", t.repo.url, dest, target, branch or ""}
end

M.env = git_env

-- Clones t's repository into dest (which must not exist or be empty) and checks out the start
-- commit: on the task's branch (moved to the start commit) when tb_meta names one, else detached.
-- Returns the commit id checked out.
function M.clone(t, dest, opts)
  local timeout = opts.timeout or 600
  local names = fs.list(dest)
  if names and #names > 0 then
    return nil, errors.new("task", ("cannot clone into '%s': the folder is not empty"):format(dest), {path = dest})
  end
  local start, branch = t.repo.start_commit, t.repo.branch
  local cmd = M.argv(t, dest)
  cmd.env, cmd.timeout = git_env(), timeout
  local r, err = proc.run(cmd)
  if not r then return nil, err end
  if r.code ~= 0 and r.code ~= 90 then
    -- leave dest as it was: absent, or an empty folder
    fs.remove_tree(dest)
    if names then fs.mkdir_p(dest) end
  end
  if r.code == 0 then return r.stdout:match("%x+") or true end
  if r.code == 92 then
    return nil, errors.new("task", ("cannot hide the commits after the start commit in the clone of '%s': %s")
                           :format(t.repo.url, last_line(r.stderr)), {path = t.meta_file})
  end
  if r.code == 91 then
    local field = start == "HEAD" and t.repo.key .. ".branch" or t.repo.start_field
    local what = start == "HEAD" and ("branch '%s'"):format(branch) or ("commit '%s'"):format(start)
    return nil, errors.new("task", ("%s: %s: %s not found in '%s' (%s); give a commit or branch that exists there")
                           :format(t.meta_file, field, what, t.repo.url, last_line(r.stderr)),
                           {path = t.meta_file, field = field})
  end
  return nil, errors.new("task", ("%s: %s: cannot clone '%s': %s; check the location and that it is reachable")
                         :format(t.meta_file, t.repo.field, t.repo.url, r.timed_out and "timed out" or last_line(r.stderr)),
                         {path = t.meta_file, field = t.repo.field})
end

return M
