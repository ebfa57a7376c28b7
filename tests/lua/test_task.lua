-- The task model: loading created and prepared tasks, every validation error, instruction and
-- repository resolution, the evaluation conversion and default tests, cloning, and the example
-- tasks' promise: each test script fails (or passes, as EXPECTED.json records) on the start
-- commit and passes with diff.patch applied, giving the recorded none/oracle scores exactly.
local T = require "runbox.testing"
local task = require "runbox.task"
local defaults = require "runbox.task.defaults"
local fs = require "runbox.fs"
local json = require "runbox.json"
local proc = require "runbox.proc"
local sched = require "runbox.sched"
local errors = require "runbox.errors"

local SRC = os.getenv("RUNBOX_SOURCE") or assert(fs.realpath("."))
local EXAMPLES = SRC .. "/examples/tasks"
local PYTHON = "/usr/bin/python3"   -- Debian's, with python3-pytest and python3-yaml

local function scratch(fn)
  return function()
    local dir = assert(fs.realpath(assert(fs.temp_dir("runbox-task-test"))))
    local ok, err = pcall(fn, dir)
    fs.remove_tree(dir)
    if not ok then error(err, 0) end
  end
end

-- A valid created task's tb_meta as a Lua table; tests change one thing at a time.
local function good_meta()
  return {
    task_id = "add-thing_20250101_120000",
    metadata = {title = "Add a thing", tags = json.array{"x"}},
    repo = {git_url = "https://example.com/r.git", branch = "main", start_commit_sha = "abc123",
            end_commit_sha = "def456", subdir = "", sparse_checkout = json.array()},
    lm = {instructions = "Add the thing."},
    evaluation = {
      rubrics = json.array{{id = "a", criterion = "does a", weight = 0.5}, {id = "b", criterion = "does b", weight = 1}},
      test_scripts = json.array{{path = "tests/test_a.py", rubric_id = "a", content = "def test_a(): pass\n"},
                                {path = "tests/test_b.py", rubric_id = "b", content = "def test_b(): pass\n"}},
    },
  }
end

-- Writes a task folder: meta is a table (encoded) or a string (written as is); files[name] = text.
local function make_task(dir, meta, files)
  assert(fs.mkdir_p(dir))
  if meta ~= nil then
    assert(fs.write(dir .. "/tb_meta.json", type(meta) == "string" and meta or json.pretty(meta)))
  end
  for name, text in pairs(files or {}) do
    local parent = (dir .. "/" .. name):match("^(.*)/")
    assert(fs.mkdir_p(parent))
    assert(fs.write(dir .. "/" .. name, text))
  end
  return dir
end

local function load_error(dir)
  local t, err = task.load(dir)
  T.eq(t, nil, "expected the task to be refused")
  T.ok(errors.is(err, "task"), "a task error")
  return err
end

---------------------------------------------------------------------------------------------------
-- loading

T.test("a created task loads with every field of the model", scratch(function(dir)
  local d = make_task(dir .. "/c", good_meta(), {["LM_INSTRUCTIONS.md"] = "# Task: Add a thing\n", ["diff.patch"] = ""})
  local t = assert(task.load(d))
  T.eq(t.kind, "created")
  T.eq(t.dir, d)
  T.eq(t.id, "add-thing_20250101_120000")
  T.eq(t.name, "add-thing")
  T.eq(t.title, "Add a thing")
  T.eq(t.meta.metadata.title, "Add a thing")
  T.eq(t.repo.url, "https://example.com/r.git")
  T.eq(t.repo.branch, "main")
  T.eq(t.repo.start_commit, "abc123")
  T.eq(t.repo.end_commit, "def456")
  T.eq(t.repo.local_path, nil)
  T.eq(t.instructions, "# Task: Add a thing\n")
  T.eq(t.instructions_file, d .. "/LM_INSTRUCTIONS.md")
  T.eq(#t.rubrics, 2)
  T.eq({t.rubrics[1].id, t.rubrics[1].criterion, t.rubrics[1].weight}, {"a", "does a", 0.5})
  T.eq({t.test_scripts[2].path, t.test_scripts[2].rubric_id}, {"tests/test_b.py", "b"})
  T.eq(t.reference_patch, d .. "/diff.patch")
  T.eq(t.network, true)
end))

T.test("a prepared task with the older repository form loads from overlay_files", scratch(function(dir)
  local meta = good_meta()
  meta.repo = nil
  meta.repository = {clone_url = "git@github.com:o/r.git", branch = "dev", commit = "0123abc"}
  meta.sandbox = {network = false}
  meta.evaluation.content_rubric = json.array{"ignored in a prepared task"}
  local d = make_task(dir .. "/p", meta, {["overlay_files/LM_INSTRUCTIONS.md"] = "overlay prompt",
                                         ["LM_INSTRUCTIONS.md"] = "root prompt is not used",
                                         ["overlay_files/diff.patch"] = "x"})
  local t = assert(task.load(d))
  T.eq(t.kind, "prepared")
  T.eq(t.repo.url, "git@github.com:o/r.git")
  T.eq(t.repo.branch, "dev")
  T.eq(t.repo.start_commit, "0123abc")
  T.eq(t.instructions, "overlay prompt")
  T.eq(t.reference_patch, d .. "/overlay_files/diff.patch")
  T.eq(t.network, false)
  T.eq(#t.rubrics, 2, "content_rubric is not converted in a prepared task")
  -- repository.url is the other spelling; an empty start commit means HEAD
  meta.repository = {url = "https://example.com/x.git", commit = ""}
  make_task(d, meta)
  t = assert(task.load(d))
  T.eq({t.repo.url, t.repo.start_commit, t.repo.branch}, {"https://example.com/x.git", "HEAD", nil})
end))

T.test("the id falls back to id, the title to the old flat title; names drop the time suffix", scratch(function(dir)
  local meta = good_meta()
  meta.task_id, meta.id = nil, "old-style"
  meta.metadata, meta.title = nil, "Flat title"
  local t = assert(task.load(make_task(dir .. "/c", meta)))
  T.eq({t.id, t.name, t.title}, {"old-style", "old-style", "Flat title"})
  T.eq(task.name_of("fix-bug_20250821_185540"), "fix-bug")
  T.eq(task.name_of("fix_bug_2025_1"), "fix_bug_2025_1")
  T.eq(task.name_of("_20250821_185540"), "_20250821_185540")
  T.eq(task.name_of("a_20250821_185540_20250821_185540"), "a_20250821_185540")
end))

T.test("repository locations: URLs kept, local paths resolved against the task folder", scratch(function(dir)
  local d = dir .. "/tasks/t"
  local cases = {
    {"https://github.com/o/r", "https://github.com/o/r", nil},
    {"ssh://git@host:22/o/r.git", "ssh://git@host:22/o/r.git", nil},
    {"git@github.com:o/r.git", "git@github.com:o/r.git", nil},
    {"host:path/r.git", "host:path/r.git", nil},
    {"file:///srv/git/r.git", "file:///srv/git/r.git", "/srv/git/r.git"},
    {"/srv/git/r.bundle", "/srv/git/r.bundle", "/srv/git/r.bundle"},
    {"../../repos/r.bundle", dir .. "/repos/r.bundle", dir .. "/repos/r.bundle"},
    {"./r", d .. "/r", d .. "/r"},
    {"r.bundle", d .. "/r.bundle", d .. "/r.bundle"},
    {"./odd:name", d .. "/odd:name", d .. "/odd:name"},
  }
  for _, c in ipairs(cases) do
    local meta = good_meta()
    meta.repo.git_url = c[1]
    local t = assert(task.load(make_task(d, meta)))
    T.eq(t.repo.url, c[2], c[1])
    T.eq(t.repo.local_path, c[3], c[1])
    T.eq(t.repo.git_url, c[1])
  end
end))

T.test("instructions: LM_INSTRUCTIONS.md, else lm.instructions, else an error naming both", scratch(function(dir)
  local meta = good_meta()
  local d = make_task(dir .. "/c", meta)
  T.eq(assert(task.load(d)).instructions, "Add the thing.")
  T.eq(assert(task.load(d)).instructions_file, nil)
  make_task(d, nil, {["LM_INSTRUCTIONS.md"] = "  \n"})   -- blank: falls back
  T.eq(assert(task.load(d)).instructions, "Add the thing.")
  meta.lm.instructions = ""
  make_task(d, meta)
  local err = load_error(d)
  T.match(err.message, "no instructions: " .. d:gsub("%p", "%%%0") .. "/LM_INSTRUCTIONS%.md is empty and lm%.instructions is empty")
  T.match(err.message, "write the agent's prompt into one of them")
  T.eq(err.field, "lm.instructions")
  fs.remove(d .. "/LM_INSTRUCTIONS.md")
  meta.lm = nil
  make_task(d, meta)
  T.match(load_error(d).message, "LM_INSTRUCTIONS%.md is missing and lm%.instructions is missing")
  -- a prepared task looks in overlay_files/
  fs.mkdir_p(d .. "/overlay_files")
  T.match(load_error(d).message, "/overlay_files/LM_INSTRUCTIONS%.md is missing")
end))

---------------------------------------------------------------------------------------------------
-- validation errors: each names the file and the field and says what to do

local function meta_with(change)
  local m = good_meta()
  change(m)
  return m
end

local ERRORS = {
  {"task_id missing", meta_with(function(m) m.task_id = nil end), "task_id", "task_id: missing; add \"task_id\""},
  {"task_id empty", meta_with(function(m) m.task_id = "" end), "task_id", "task_id: empty"},
  {"task_id not a string", meta_with(function(m) m.task_id = 5 end), "task_id", "task_id: expected a string, got the number 5"},
  {"id empty", meta_with(function(m) m.task_id = nil; m.id = "" end), "id", "id: empty; add \"task_id\""},
  {"id not a string", meta_with(function(m) m.task_id = nil; m.id = json.array{1} end), "id", "id: expected a string, got a list"},
  {"task_id not a folder name", meta_with(function(m) m.task_id = "a/b" end), "task_id", "cannot name a folder %(it contains '/'%)"},
  {"task_id hidden", meta_with(function(m) m.task_id = ".x" end), "task_id", "starts with '%.'"},
  {"metadata not an object", meta_with(function(m) m.metadata = "t" end), "metadata", "metadata: expected an object, got the string \"t\""},
  {"title missing", meta_with(function(m) m.metadata = {tags = json.array()} end), "metadata.title",
   "metadata%.title: missing; add \"metadata\": {\"title\""},
  {"title blank", meta_with(function(m) m.metadata.title = "  " end), "metadata.title", "metadata%.title: empty"},
  {"title not a string", meta_with(function(m) m.metadata.title = true end), "metadata.title", "expected a string, got true"},
  {"repo and repository absent", meta_with(function(m) m.repo = nil end), "repo",
   "repo: missing; add \"repo\": {\"git_url\""},
  {"repo not an object", meta_with(function(m) m.repo = "https://x" end), "repo", "repo: expected an object"},
  {"git_url empty", meta_with(function(m) m.repo.git_url = "" end), "repo.git_url",
   "repo%.git_url: empty; set it to a location git can clone"},
  {"git_url missing", meta_with(function(m) m.repo.git_url = nil end), "repo.git_url", "repo%.git_url: missing"},
  {"git_url null", meta_with(function(m) m.repo.git_url = json.null end), "repo.git_url", "repo%.git_url: missing"},
  {"git_url not a string", meta_with(function(m) m.repo.git_url = 1 end), "repo.git_url", "expected a string, got the number 1"},
  {"git_url an option", meta_with(function(m) m.repo.git_url = "--upload-pack=evil" end), "repo.git_url", "starts with '%-'"},
  {"repository url missing", meta_with(function(m) m.repo = nil; m.repository = {branch = "x"} end),
   "repository.clone_url", "repository%.clone_url: missing"},
  {"branch not a string", meta_with(function(m) m.repo.branch = 3 end), "repo.branch", "repo%.branch: expected a string, got the number 3"},
  {"branch an option", meta_with(function(m) m.repo.branch = "-b" end), "repo.branch", "starts with '%-'"},
  {"start commit not a string", meta_with(function(m) m.repo.start_commit_sha = {} end), "repo.start_commit_sha",
   "expected a string, got an object"},
  {"end commit not a string", meta_with(function(m) m.repo.end_commit_sha = 1.5 end), "repo.end_commit_sha", "expected a string"},
  {"network not a boolean", meta_with(function(m) m.sandbox = {network = "off"} end), "sandbox.network",
   "sandbox%.network: expected true or false, got the string \"off\"; write true or false"},
  {"lm not an object", meta_with(function(m) m.lm = "x" end), "lm", "lm: expected an object"},
  {"lm.instructions not a string", meta_with(function(m) m.lm.instructions = 7 end), "lm.instructions", "expected a string"},
  {"evaluation not an object", meta_with(function(m) m.evaluation = json.array() end), "evaluation", "evaluation: expected an object, got a list"},
  {"rubrics not a list", meta_with(function(m) m.evaluation.rubrics = {a = 1} end), "evaluation.rubrics",
   "evaluation%.rubrics: expected a list, got an object"},
  {"rubric not an object", meta_with(function(m) m.evaluation.rubrics[2] = "b" end), "evaluation.rubrics[1]",
   "evaluation%.rubrics%[1%]: expected an object {id, criterion, weight}"},
  {"rubric without id", meta_with(function(m) m.evaluation.rubrics[2].id = nil end), "evaluation.rubrics[1].id",
   "evaluation%.rubrics%[1%]%.id: missing; give each rubric an id"},
  {"rubric weight a string", meta_with(function(m) m.evaluation.rubrics[1].weight = "0.5" end), "evaluation.rubrics[0].weight",
   "evaluation%.rubrics%[0%]%.weight: expected a number, got the string \"0%.5\"; write the weight as a number"},
  {"rubric weight missing", meta_with(function(m) m.evaluation.rubrics[1].weight = nil end), "evaluation.rubrics[0].weight",
   "weight: missing; give the rubric's weight"},
  {"rubric weight negative", meta_with(function(m) m.evaluation.rubrics[1].weight = -1 end), "evaluation.rubrics[0].weight",
   "%-1 is negative"},
  {"rubric criterion not a string", meta_with(function(m) m.evaluation.rubrics[1].criterion = 1 end),
   "evaluation.rubrics[0].criterion", "expected a string"},
  {"duplicate rubric ids", meta_with(function(m) m.evaluation.rubrics[3] = {id = "a", weight = 1} end),
   "evaluation.rubrics[2].id", "duplicate id 'a' %(also evaluation%.rubrics%[0%]%); rubric ids must be unique"},
  {"test_scripts not a list", meta_with(function(m) m.evaluation.test_scripts = "x" end), "evaluation.test_scripts",
   "expected a list, got the string"},
  {"test script not an object", meta_with(function(m) m.evaluation.test_scripts[1] = 1 end), "evaluation.test_scripts[0]",
   "expected an object {path, rubric_id, content}"},
  {"unknown rubric_id", meta_with(function(m) m.evaluation.test_scripts[1].rubric_id = "zzz" end),
   "evaluation.test_scripts[0].rubric_id",
   "'zzz' is not the id of any rubric %(known: a, b%); fix the id or add the rubric to evaluation%.rubrics"},
  {"missing rubric_id", meta_with(function(m) m.evaluation.test_scripts[2].rubric_id = nil end),
   "evaluation.test_scripts[1].rubric_id", "rubric_id: missing; name the rubric"},
  {"absolute test path", meta_with(function(m) m.evaluation.test_scripts[1].path = "/etc/test_x.py" end),
   "evaluation.test_scripts[0].path", "'/etc/test_x%.py' is absolute; give a path relative to the repository root"},
  {"test path escaping with ..", meta_with(function(m) m.evaluation.test_scripts[1].path = "tests/../../x.py" end),
   "evaluation.test_scripts[0].path", "contains '%.%.'; test scripts must stay inside the repository"},
  {"test path inside .git", meta_with(function(m) m.evaluation.test_scripts[1].path = "./.git/hooks/x.py" end),
   "evaluation.test_scripts[0].path", "is inside %.git"},
  {"test path empty", meta_with(function(m) m.evaluation.test_scripts[1].path = "" end),
   "evaluation.test_scripts[0].path", "path: empty; give the test file's path"},
  {"test path a folder", meta_with(function(m) m.evaluation.test_scripts[1].path = "tests/" end),
   "evaluation.test_scripts[0].path", "names a folder"},
  {"test path with a backslash", meta_with(function(m) m.evaluation.test_scripts[1].path = "tests\\x.py" end),
   "evaluation.test_scripts[0].path", "backslash"},
  {"duplicate test path", meta_with(function(m) m.evaluation.test_scripts[2].path = "./tests//test_a.py" end),
   "evaluation.test_scripts[1].path", "duplicate path 'tests/test_a%.py' %(also evaluation%.test_scripts%[0%]%)"},
  {"test content missing", meta_with(function(m) m.evaluation.test_scripts[1].content = nil end),
   "evaluation.test_scripts[0].content", "content: missing; put the test file's Python source here"},
  {"legacy rubric entry of the wrong type", meta_with(function(m) m.evaluation.location_rubric = json.array{true} end),
   "evaluation.location_rubric[0]", "expected a criterion %(a string%) or an object"},
  {"legacy list not a list", meta_with(function(m) m.evaluation.clarity_rubric = 1 end),
   "evaluation.clarity_rubric", "expected a list"},
  {"legacy rubric id colliding", meta_with(function(m) m.evaluation.content_rubric = json.array{{id = "a", criterion = "c"}} end),
   "evaluation.content_rubric[0].id", "duplicate id 'a' %(also evaluation%.rubrics%[0%]%)"},
  {"reserved default rubric id", meta_with(function(m)
     m.evaluation.rubrics = json.array{{id = "runbox_repo_checks", weight = 1}}
     m.evaluation.test_scripts = nil end),
   "evaluation.rubrics[0].id", "id of a default rubric runbox adds"},
}

for _, case in ipairs(ERRORS) do
  T.test("error: " .. case[1], scratch(function(dir)
    local d = make_task(dir .. "/c", case[2])
    local err = load_error(d)
    local file = d .. "/tb_meta.json"
    T.eq(err.path, file)
    T.eq(err.field, case[3])
    T.match(err.message, "^" .. file:gsub("%p", "%%%0") .. ": " .. case[3]:gsub("%p", "%%%0") .. ": ")
    T.match(err.message, case[4])
  end))
end

T.test("error: the task folder or its tb_meta.json is missing, or not JSON", scratch(function(dir)
  local err = load_error(dir .. "/nope")
  T.match(err.message, "task folder '.*/nope' does not exist; give the path of a folder that holds tb_meta%.json")
  fs.write(dir .. "/file", "")
  T.match(load_error(dir .. "/file").message, "'.*/file' is not a folder")
  local d = make_task(dir .. "/empty")
  err = load_error(d)
  T.match(err.message, "^" .. d:gsub("%p", "%%%0") .. "/tb_meta%.json: not found; a task folder needs a tb_meta%.json")
  T.eq(err.path, d .. "/tb_meta.json")
  make_task(d, '{\n  "task_id": "x",\n  "metadata": {"title": }\n}')
  err = load_error(d)
  T.match(err.message, "tb_meta%.json: invalid JSON: .* at line 3, column 25")
  T.match(err.message, "fix the JSON syntax there")
  T.eq({err.line, err.column}, {3, 25})
  make_task(d, "[1, 2]")
  T.match(load_error(d).message, "tb_meta%.json: expected a JSON object at the top, got a list")
  T.raises("bad argument", task.load, 42)
end))

---------------------------------------------------------------------------------------------------
-- evaluation conversion and defaults

local DIFF = table.concat({
  "diff --git a/src/app.py b/src/app.py",
  "index 1111111..2222222 100644",
  "--- a/src/app.py",
  "+++ b/src/app.py",
  "@@ -1,3 +1,3 @@",
  " keep",
  "--- a/not/a/header.py",       -- a removed line that looks like a header
  "+++ b/not/either.py",         -- an added one
  " keep",
  "diff --git a/old name.txt b/new name.txt",
  "similarity index 90%",
  "rename from old name.txt",
  "rename to new name.txt",
  "diff --git a/logo.png b/logo.png",
  "new file mode 100644",
  "index 0000000..3333333",
  "Binary files /dev/null and b/logo.png differ",
  "diff --git a/gone.txt b/gone.txt",
  "deleted file mode 100644",
  "--- a/gone.txt",
  "+++ /dev/null",
  "@@ -1 +0,0 @@",
  "-bye",
  'diff --git "a/caf\\303\\251.md" "b/caf\\303\\251.md"',
  'index 4..5 100644',
  '--- "a/caf\\303\\251.md"',
  '+++ "b/caf\\303\\251.md"',
  "@@ -1 +1 @@",
  "-a",
  "+b",
  "diff --git a/run.sh b/run.sh",
  "old mode 100644",
  "new mode 100755",
  "",
}, "\n")

T.test("the files a diff touches: renames, binaries, deletions, quoted names, mode changes", function()
  T.eq(defaults.touched_files(DIFF),
       {"caf\195\169.md", "gone.txt", "logo.png", "new name.txt", "old name.txt", "run.sh", "src/app.py"})
  T.eq(defaults.touched_files(""), {})
end)

T.test("a created task's content/location/clarity lists become rubrics", scratch(function(dir)
  local meta = good_meta()
  meta.evaluation.content_rubric = json.array{"Explains the flag", {criterion = "named", weight = 2, id = "mine"}}
  meta.evaluation.location_rubric = json.array{{description = "in README"}}
  meta.evaluation.clarity_rubric = json.array()
  local t = assert(task.load(make_task(dir .. "/c", meta)))
  local got = {}
  for _, r in ipairs(t.rubrics) do got[#got + 1] = {r.id, r.criterion, r.weight} end
  T.eq(got, {{"a", "does a", 0.5}, {"b", "does b", 1}, {"content_1", "Explains the flag", 1},
             {"mine", "named", 2}, {"location_1", "in README", 1}})
  T.eq(#t.test_scripts, 2, "the task has tests: no defaults")
  local pm = task.prepared_meta(t)
  T.eq(pm.evaluation.content_rubric, nil)
  T.eq(#pm.evaluation.rubrics, 5)
end))

T.test("a created task without tests gets the default rubrics and tests", scratch(function(dir)
  local meta = good_meta()
  meta.evaluation = {content_rubric = json.array(), location_rubric = json.array(), clarity_rubric = json.array()}
  local d = make_task(dir .. "/c", meta, {["diff.patch"] = DIFF})
  local t = assert(task.load(d))
  T.eq({t.rubrics[1].id, t.rubrics[1].weight, t.rubrics[2].id, t.rubrics[2].weight},
       {"runbox_touches_reference", 0.5, "runbox_repo_checks", 0.5})
  T.eq({t.test_scripts[1].path, t.test_scripts[1].rubric_id}, {".runbox/tests/test_touches_reference.py", "runbox_touches_reference"})
  T.eq({t.test_scripts[2].path, t.test_scripts[2].rubric_id}, {".runbox/tests/test_repo_checks.py", "runbox_repo_checks"})
  T.match(t.test_scripts[1].content, 'START = "abc123"', "the start commit is embedded")
  T.match(t.test_scripts[1].content, 'REFERENCE_FILES = %["caf\195\169%.md","gone%.txt","logo%.png"')
  -- without diff.patch the touch test only asks for a change; no evaluation key at all is fine too
  fs.remove(d .. "/diff.patch")
  meta.evaluation = nil
  meta.repo.start_commit_sha = nil
  make_task(d, meta)
  t = assert(task.load(d))
  T.match(t.test_scripts[1].content, "REFERENCE_FILES = %[%]")
  T.match(t.test_scripts[1].content, 'START = "HEAD"')
  T.match(t.rubrics[1].criterion, "no reference diff")
  -- rubrics without test scripts still get the defaults next to them
  meta.evaluation = {rubrics = json.array{{id = "judged", criterion = "by a judge", weight = 1}}}
  make_task(d, meta)
  t = assert(task.load(d))
  T.eq({#t.rubrics, t.rubrics[1].id, #t.test_scripts}, {3, "judged", 2})
end))

T.test("the default tests are valid Python that keeps odd file names exact", scratch(function(dir)
  local names = {"a.py", 'odd "name"\\x', "caf\195\169 \t.md"}
  local rubrics, scripts = defaults.evaluation(names, "HEAD")
  T.eq(#rubrics, 2)
  for i, s in ipairs(scripts) do
    local path = dir .. "/t" .. i .. ".py"
    fs.write(path, s.content)
    local r = assert(proc.run{PYTHON, "-c", "import json, runpy, sys; g = runpy.run_path(sys.argv[1]); "
                              .. "print(json.dumps([g['START'], g.get('REFERENCE_FILES')]))", path})
    T.eq(r.code, 0, r.stderr)
    local got = json.decode(r.stdout)
    T.eq(got[1], "HEAD")
    if i == 1 then T.eq(got[2], names) end
  end
end))

T.test("discover lists the task folders, sorted, and nothing else", scratch(function(dir)
  make_task(dir .. "/b", good_meta())
  make_task(dir .. "/a", good_meta())
  make_task(dir .. "/no-meta", nil, {["README"] = "x"})
  make_task(dir .. "/.hidden", good_meta())
  fs.write(dir .. "/EXPECTED.json", "{}")
  T.eq(task.discover(dir), {dir .. "/a", dir .. "/b"})
  local none, err = task.discover(dir .. "/missing")
  T.eq(none, nil)
  T.match(err.message, "cannot list task folder")
end))

---------------------------------------------------------------------------------------------------
-- cloning

local function git(cwd, ...)
  local cmd = {"git", "-c", "user.name=t", "-c", "user.email=t@t", ...}
  cmd.cwd = cwd
  local r = assert(proc.run(cmd))
  assert(r.code == 0, r.stderr)
  return (r.stdout:gsub("%s+$", ""))
end

T.test("clone checks out the start commit on the task's branch, with errors naming the field", scratch(function(dir)
  local repo = dir .. "/repo"
  fs.mkdir_p(repo)
  git(repo, "init", "-q", "-b", "main")
  fs.write(repo .. "/f", "one")
  git(repo, "add", "f"); git(repo, "commit", "-q", "-m", "one")
  local first = git(repo, "rev-parse", "HEAD")
  fs.write(repo .. "/f", "two")
  git(repo, "commit", "-q", "-am", "two")
  local meta = good_meta()
  meta.repo.git_url = "../repo"
  meta.repo.start_commit_sha = first
  local t = assert(task.load(make_task(dir .. "/t", meta)))
  assert(task.clone(t, dir .. "/c1"))
  T.eq(fs.read(dir .. "/c1/f"), "one")
  T.eq(git(dir .. "/c1", "rev-parse", "--abbrev-ref", "HEAD"), "main")
  -- no branch: detached at the commit; HEAD with a branch: the branch's tip
  t.repo.branch = nil
  assert(task.clone(t, dir .. "/c2"))
  T.eq(git(dir .. "/c2", "rev-parse", "HEAD"), first)
  T.eq(git(dir .. "/c2", "rev-parse", "--abbrev-ref", "HEAD"), "HEAD")
  t.repo.branch, t.repo.start_commit = "main", "HEAD"
  assert(task.clone(t, dir .. "/c3"))
  T.eq(fs.read(dir .. "/c3/f"), "two")
  -- errors
  local ok, err = task.clone(t, dir .. "/c3")
  T.eq(ok, nil)
  T.match(err.message, "cannot clone into '.*/c3': the folder is not empty")
  t.repo.start_commit = "0000000000000000000000000000000000000000"
  ok, err = task.clone(t, dir .. "/c4")
  T.eq(ok, nil)
  T.match(err.message, "tb_meta%.json: repo%.start_commit_sha: commit '0000000000000000000000000000000000000000' not found in")
  T.eq(err.field, "repo.start_commit_sha")
  T.eq(fs.exists(dir .. "/c4"), false, "no half-made clone is left")
  fs.mkdir_p(dir .. "/c6")
  T.eq(task.clone(t, dir .. "/c6"), nil)
  T.eq(fs.list(dir .. "/c6"), {}, "an empty folder given stays empty")
  t.repo.url = dir .. "/missing-repo"
  ok, err = task.clone(t, dir .. "/c5")
  T.eq(ok, nil)
  T.match(err.message, "tb_meta%.json: repo%.git_url: cannot clone '.*/missing%-repo': .*; check the location")
  T.eq(fs.exists(dir .. "/c5"), false)
end))

---------------------------------------------------------------------------------------------------
-- the example tasks

local function pytest(repo, path)
  local r = assert(proc.run{PYTHON, "-m", "pytest", "-q", path, cwd = repo, timeout = 120,
                            env = {PYTHONDONTWRITEBYTECODE = "1"}})
  return r.code == 0, r.stdout .. r.stderr
end

-- The §3.6 formula, computed here independently of the example generator.
local function score(t, passed)
  local earned, total, per = 0, 0, {}
  for _, r in ipairs(t.rubrics) do
    local n, ok = 0, 0
    for _, s in ipairs(t.test_scripts) do
      if s.rubric_id == r.id then n = n + 1; if passed[s.path] then ok = ok + 1 end end
    end
    total = total + r.weight
    if n > 0 then per[r.id] = ok / n; earned = earned + per[r.id] * r.weight end
  end
  return total > 0 and earned / total or 0, per
end

local function check_scores(name, want, t, passed)
  local total, per = score(t, passed)
  T.ok(math.abs(total - want.total_score) < 1e-12, ("%s: total %s, EXPECTED.json says %s"):format(name, total, want.total_score))
  for id, s in pairs(want.rubrics) do
    T.ok(math.abs((per[id] or -1) - s) < 1e-12, ("%s: rubric %s scored %s, EXPECTED.json says %s"):format(name, id, per[id], s))
  end
end

-- Runs every test script before and after diff.patch; returns {path = {before =, after =, output =}}.
local function run_example(t, dir)
  local repo = dir .. "/" .. t.name
  assert(task.clone(t, repo))
  for _, s in ipairs(t.test_scripts) do
    local path = repo .. "/" .. s.path
    assert(fs.mkdir_p(path:match("^(.*)/")))
    assert(fs.write(path, s.content))
  end
  local out = {}
  for _, s in ipairs(t.test_scripts) do
    local ok, output = pytest(repo, s.path)
    out[s.path] = {before = ok, before_output = output}
  end
  local r = assert(proc.run{"git", "apply", t.reference_patch, cwd = repo})
  assert(r.code == 0, "git apply diff.patch failed for " .. t.name .. ": " .. r.stderr)
  for _, s in ipairs(t.test_scripts) do
    local ok, output = pytest(repo, s.path)
    out[s.path].after, out[s.path].after_output = ok, output
  end
  return out
end

T.test("the examples: four kinds or more, all listed in EXPECTED.json, with their repository files", function()
  local expected = assert(json.decode_file(EXAMPLES .. "/EXPECTED.json"))
  local dirs = assert(task.discover(EXAMPLES))
  T.ok(#dirs >= 4, "at least four example tasks")
  local names = {}
  for _, d in ipairs(dirs) do
    local t = assert(task.load(d))
    names[#names + 1] = t.name
    T.eq(t.kind, "created")
    T.eq(d:match("[^/]+$"), t.name, "the folder is named like the prepared task")
    T.ok(expected.tasks[t.name], t.name .. " in EXPECTED.json")
    T.ok(t.instructions_file, t.name .. " has LM_INSTRUCTIONS.md")
    T.ok(t.reference_patch, t.name .. " has diff.patch")
    T.eq(t.repo.git_url, "../../repos/" .. t.name .. ".bundle")
    T.ok(fs.exists(t.repo.local_path), "the bundle exists")
    local info = assert(json.decode_file(d .. "/repo_info.json"))
    T.eq({info.start_commit, info.end_commit}, {t.repo.start_commit, t.repo.end_commit})
    T.eq(info.touched_files, defaults.touched_files(assert(fs.read(t.reference_patch))))
    local weights = {}
    for _, r in ipairs(t.rubrics) do weights[r.id] = r.weight end
    T.eq(weights, expected.tasks[t.name].rubrics)
    local paths = {}
    for _, s in ipairs(t.test_scripts) do paths[s.path] = s.rubric_id end
    local want = {}
    for p, e in pairs(expected.tasks[t.name].tests) do want[p] = e.rubric_id end
    T.eq(paths, want)
  end
  local listed = {}
  for n in pairs(expected.tasks) do listed[#listed + 1] = n end
  table.sort(listed)
  T.eq(names, listed)
end)

T.test("the examples: tests fail on the start commit as recorded, pass with diff.patch, scores exact", scratch(function(dir)
  local expected = assert(json.decode_file(EXAMPLES .. "/EXPECTED.json"))
  local jobs = {}
  for _, d in ipairs(assert(task.discover(EXAMPLES))) do
    local t = assert(task.load(d))
    jobs[#jobs + 1] = {t = t, run = sched.spawn(run_example, t, dir)}
  end
  for _, job in ipairs(jobs) do
    local t, want = job.t, expected.tasks[job.t.name]
    local results = job.run:join()
    local before, after, failing_before = {}, {}, 0
    for path, r in pairs(results) do
      local e = want.tests[path]
      T.eq(r.before, e.before, ("%s %s on the start commit:\n%s"):format(t.name, path, r.before_output))
      T.eq(r.after, true, ("%s %s with diff.patch:\n%s"):format(t.name, path, r.after_output))
      before[path], after[path] = r.before, r.after
      if not r.before then failing_before = failing_before + 1 end
    end
    T.ok(failing_before > 0, t.name .. ": doing nothing must fail some test")
    check_scores(t.name .. " none", want.none, t, before)
    check_scores(t.name .. " oracle", want.oracle, t, after)
    T.eq(want.oracle.total_score, 1.0)
  end
end), {timeout = 120})

T.test("the default tests measure the change: wrong files, broken tests, syntax errors fail", scratch(function(dir)
  local t = assert(task.load(EXAMPLES .. "/add-slugify"))
  local function fresh(name)
    local repo = dir .. "/" .. name
    assert(task.clone(t, repo))
    for _, s in ipairs(t.test_scripts) do
      assert(fs.mkdir_p((repo .. "/" .. s.path):match("^(.*)/")))
      assert(fs.write(repo .. "/" .. s.path, s.content))
    end
    return repo
  end
  local function results(repo)
    local touch = pytest(repo, t.test_scripts[1].path)
    local checks = pytest(repo, t.test_scripts[2].path)
    return {touch, checks}
  end
  -- a change to an unrelated file: not the reference's files, but nothing broken
  local repo = fresh("elsewhere")
  fs.write(repo .. "/NOTES.txt", "new file\n")
  T.eq(results(repo), {false, true})
  -- the reference change plus a failing test of the repository's own suite
  repo = fresh("broken")
  T.eq(assert(proc.run{"git", "apply", t.reference_patch, cwd = repo}).code, 0)
  fs.write(repo .. "/tests/test_extra.py", "def test_fails():\n    assert False\n")
  T.eq(results(repo), {true, false})
  -- a change committed by the agent still counts
  repo = fresh("committed")
  T.eq(assert(proc.run{"git", "apply", t.reference_patch, cwd = repo}).code, 0)
  git(repo, "commit", "-q", "-am", "agent commit")
  T.eq(results(repo), {true, true})
  -- a repository without a test suite: the changed Python files must compile
  fs.remove_tree(repo .. "/tests")
  git(repo, "commit", "-q", "-am", "no tests")
  fs.write(repo .. "/textutils/strings.py", "def broken(:\n")
  T.eq(results(repo), {true, false})
  fs.write(repo .. "/textutils/strings.py", "def fine():\n    return 1\n")
  T.eq(results(repo), {true, true})
end), {timeout = 90})

T.test("examples/parallel.yaml and examples/parallel.lua say the same thing", function()
  local yaml = require "runbox.yaml"
  local from_yaml = assert(yaml.decode(assert(fs.read(SRC .. "/examples/parallel.yaml"))))
  local from_lua = assert(loadfile(SRC .. "/examples/parallel.lua", "t", {}))()
  T.eq(from_lua, from_yaml)
  T.eq(from_yaml.agents.agent, "oracle")
  T.eq(from_yaml.datasets.examples.path, "examples/tasks")
  for _, k in ipairs{"model", "timeout_sec", "token_limit", "max_parallel"} do T.ok(from_yaml.agents[k] ~= nil, k) end
  T.ok(from_yaml.output.results_dir and from_yaml.output.save_artifacts ~= nil)
end)

T.run()
