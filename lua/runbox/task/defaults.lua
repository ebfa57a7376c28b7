-- Default rubrics and test scripts for a created task that brings no tests of its own, and the
-- diff reader they need. The original tool's defaults could never pass (they looked at staged
-- changes, which an applied patch never makes); these measure the agent's change against the
-- reference diff and the repository's own checks, and both pass for the reference solution.
local json = require "runbox.json"

local M = {}

-- Where the default scripts go inside the repository: a dot folder, so the repository's own
-- pytest run (which skips dot folders) never collects them, and easy to leave out of "what changed".
M.dir = ".runbox/tests"

---------------------------------------------------------------------------------------------------
-- the files a unified git diff touches

-- git's C-style quoting of unusual path names: "a/caf\303\251 \"x\"".
local function unquote(s)
  if s:sub(1, 1) ~= '"' then return s end
  local body = s:match('^"(.*)"$') or s:sub(2)
  local esc = {n = "\n", t = "\t", r = "\r", b = "\b", f = "\f", a = "\a", v = "\v", ['"'] = '"', ["\\"] = "\\"}
  return (body:gsub("\\(%d%d%d)", function(o) return string.char(tonumber(o, 8) % 256) end)
              :gsub("\\(.)", function(c) return esc[c] or c end))
end

-- A path on a ---/+++ line: drop the a/ or b/ prefix and any tab-separated timestamp.
local function side_path(s)
  if s:sub(1, 1) ~= '"' then s = s:gsub("\t.*$", "") end
  s = unquote(s)
  if s == "/dev/null" then return nil end
  return (s:gsub("^[ab]/", "", 1))
end

-- "a/P b/P" of a diff --git header (the only place a mode-only or binary change names its file).
local function header_path(rest)
  if rest:sub(1, 1) == '"' then
    local first = rest:match('^("[^"]*")') -- names with quotes inside are quoted again on ---/+++
    return first and side_path(first)
  end
  local n = (#rest - 5) / 2
  if n >= 1 and n == math.floor(n) then
    local a, b = rest:sub(3, 2 + n), rest:sub(n + 6)
    if rest:sub(1, 2) == "a/" and rest:sub(n + 3, n + 5) == " b/" and a == b then return a end
  end
  return nil
end

-- Sorted, unique paths (relative to the repository) that a unified diff adds, changes, deletes,
-- renames or copies. Hunk bodies are skipped by their line counts, so a removed line that reads
-- "-- x" is never taken for a header.
function M.touched_files(patch)
  local seen, out = {}, {}
  local function add(p)
    if p and p ~= "" and not seen[p] then seen[p] = true; out[#out + 1] = p end
  end
  local old, new, header, named = 0, 0, nil, false
  local function close_section()
    if header and not named then add(header_path(header)) end
    header, named = nil, false
  end
  for line in (patch .. "\n"):gmatch("([^\n]*)\n") do
    line = line:gsub("\r$", "")
    if old > 0 or new > 0 then
      local c = line:sub(1, 1)
      if c == " " or c == "" then old, new = old - 1, new - 1
      elseif c == "-" then old = old - 1
      elseif c == "+" then new = new - 1 end
    elseif line:sub(1, 11) == "diff --git " then
      close_section()
      header = line:sub(12)
    else
      local a, b = line:match("^@@ %-%d+,?(%d*) %+%d+,?(%d*) @@")
      if a then
        old, new = tonumber(a) or 1, tonumber(b) or 1
      else
        local p = line:match("^%-%-%- (.+)$") or line:match("^%+%+%+ (.+)$")
        if p then add(side_path(p)); named = true end
        p = line:match("^rename from (.+)$") or line:match("^rename to (.+)$")
            or line:match("^copy from (.+)$") or line:match("^copy to (.+)$")
        if p then add(unquote(p)); named = true end
      end
    end
  end
  close_section()
  table.sort(out)
  return out
end

---------------------------------------------------------------------------------------------------
-- the default test scripts (Python, run by pytest in the repository root)

-- Shared head: which files the agent changed, compared with the start commit, untracked files
-- included (an applied patch leaves new files untracked), caches and our own scripts left out.
local COMMON = [==[
import os
import subprocess
import sys

START = %s
OWN_DIR = %s
GIT = ["git", "-c", "safe.directory=*"]


def repo_root():
    out = subprocess.run(GIT + ["rev-parse", "--show-toplevel"], capture_output=True, text=True)
    assert out.returncode == 0, "not inside a git repository: " + out.stderr
    return out.stdout.strip()


def git_paths(args):
    out = subprocess.run(GIT + args, cwd=repo_root(), capture_output=True)
    assert out.returncode == 0, "git %%s failed: %%s" %% (" ".join(args), out.stderr.decode(errors="replace"))
    return [p.decode("utf-8", "replace") for p in out.stdout.split(b"\0") if p]


def ignored(path):
    parts = path.split("/")
    return (path.startswith(OWN_DIR + "/") or "__pycache__" in parts or ".pytest_cache" in parts
            or path.endswith(".pyc"))


def changed_files():
    paths = git_paths(["diff", "--name-only", "-z", "--no-renames", START, "--"])
    paths += git_paths(["ls-files", "-z", "--others", "--exclude-standard"])
    return sorted(set(p for p in paths if not ignored(p)))
]==]

local TOUCHES = [==[

REFERENCE_FILES = %s


def test_change_touches_reference_files():
    changed = changed_files()
    assert changed, "the repository is unchanged since the start commit " + START
    if REFERENCE_FILES:
        common = sorted(set(changed) & set(REFERENCE_FILES))
        assert common, ("the change touches none of the files the reference solution changes\n"
                        "reference: %%s\nchanged:   %%s" %% (REFERENCE_FILES, changed))
]==]

local CHECKS = [==[


def test_repository_checks_pass():
    if os.environ.get("RUNBOX_DEFAULT_TEST_NESTED"):
        return  # collected by the repository's own run below: nothing to do there
    changed = changed_files()
    assert changed, "the repository is unchanged since the start commit " + START
    root = repo_root()
    env = dict(os.environ, RUNBOX_DEFAULT_TEST_NESTED="1")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "--ignore=" + OWN_DIR.split("/")[0]],
                         cwd=root, env=env, capture_output=True, text=True)
    if run.returncode == 5:
        # no test suite in the repository: every changed Python file must at least compile
        for path in changed:
            full = os.path.join(root, path)
            if path.endswith(".py") and os.path.isfile(full):
                with open(full, "rb") as f:
                    compile(f.read(), path, "exec")  # raises SyntaxError; writes nothing
        return
    tail = "\n".join((run.stdout + run.stderr).splitlines()[-40:])
    assert run.returncode == 0, "the repository's own tests fail:\n" + tail
]==]

-- Python literal for a string or a list of strings (JSON's escapes are valid Python escapes).
local function py(v)
  if type(v) == "table" then return json.encode(json.array(v)) end
  return json.encode(v)
end

-- The default rubrics and test scripts. reference_files: what the reference diff touches (may be
-- empty when the task has no diff.patch); start: the start commit ("HEAD" when unknown).
function M.evaluation(reference_files, start)
  local head = COMMON:format(py(start), py(M.dir))
  local touch_criterion = #reference_files > 0
      and "The change touches the files the reference solution changes"
      or "The agent changed the repository (the task has no reference diff to compare with)"
  local rubrics = {
    {id = "runbox_touches_reference", criterion = touch_criterion, weight = 0.5},
    {id = "runbox_repo_checks",
     criterion = "Something changed and the repository's own tests still pass "
              .. "(without a test suite: every changed Python file compiles)",
     weight = 0.5},
  }
  local scripts = {
    {path = M.dir .. "/test_touches_reference.py", rubric_id = "runbox_touches_reference",
     content = head .. TOUCHES:format(py(reference_files))},
    {path = M.dir .. "/test_repo_checks.py", rubric_id = "runbox_repo_checks",
     content = head .. CHECKS},
  }
  return rubrics, scripts
end

return M
