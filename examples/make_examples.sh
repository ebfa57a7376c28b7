#!/usr/bin/env bash
# Rebuilds the example tasks from examples/src/<task>/:
#   start/        the repository at the start commit
#   end/          files the reference solution adds or changes (copied over start/)
#   eval/         the task's test scripts (their content goes into tb_meta.json)
#   instructions.md, task.json (id, title, rubrics, tests and whether each passes before the change)
# For each task it makes a git repository with two commits (start, end), keeps it as
# examples/repos/<task>.bundle, and writes the created task examples/tasks/<task>/ (tb_meta.json,
# LM_INSTRUCTIONS.md, diff.patch = git diff start end, repo_info.json, notes.md when task.json has
# notes), then examples/tasks/EXPECTED.json: the exact scores of the `none` and `oracle` agents.
# Authors and dates are fixed, so the commit ids come out the same on every machine.
# Needs git and python3 (only its json module). Usage: examples/make_examples.sh
set -euo pipefail
cd "$(dirname "$0")"
here=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# No user or system git configuration (signing, hooks, default branch, diff options).
export HOME="$work/home" GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
mkdir -p "$HOME"
export GIT_AUTHOR_NAME="runbox examples" GIT_AUTHOR_EMAIL="examples@runbox.invalid"
export GIT_COMMITTER_NAME="$GIT_AUTHOR_NAME" GIT_COMMITTER_EMAIL="$GIT_AUTHOR_EMAIL"

commit() {   # commit REPO DATE MESSAGE
  git -C "$1" add -A
  GIT_AUTHOR_DATE="$2" GIT_COMMITTER_DATE="$2" git -C "$1" commit -q --no-verify -m "$3"
  git -C "$1" rev-parse HEAD
}

mkdir -p repos tasks
for src in src/*/; do
  name=$(basename "$src")
  title=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["title"])' "$src/task.json")
  repo="$work/repos/$name"
  git init -q -b main "$repo"
  cp -R "$src/start/." "$repo/"
  start=$(commit "$repo" "2025-03-01T09:00:00+0000" "OneShot start: $title")
  cp -R "$src/end/." "$repo/"
  end=$(commit "$repo" "2025-03-01T09:30:00+0000" "OneShot end: $title")

  rm -f "repos/$name.bundle"
  git -C "$repo" bundle create --quiet "$here/repos/$name.bundle" HEAD main
  mkdir -p "tasks/$name"
  git -C "$repo" diff --no-color --no-ext-diff "$start" "$end" > "tasks/$name/diff.patch"
  git -C "$repo" diff --name-only "$start" "$end" > "$work/touched"
  python3 - "$src" "tasks/$name" "$name" "$start" "$end" "$work/touched" <<'PY'
import json, os, sys
src, out, name, start, end, touched = sys.argv[1:]
spec = json.load(open(os.path.join(src, "task.json")))
instructions = open(os.path.join(src, "instructions.md")).read()
url = "../../repos/%s.bundle" % name
files = [l for l in open(touched).read().splitlines() if l]

def write(path, text):
    with open(os.path.join(out, path), "w") as f:
        f.write(text)

if spec.get("created_form"):
    evaluation = {"content_rubric": [], "location_rubric": [], "clarity_rubric": []}
else:
    evaluation = {
        "rubrics": spec["rubrics"],
        "test_scripts": [{"path": t["path"], "rubric_id": t["rubric_id"],
                          "content": open(os.path.join(src, t["file"])).read()} for t in spec["tests"]],
    }
meta = {
    "task_id": spec["task_id"],
    "metadata": {"title": spec["title"], "tags": spec["tags"]},
    "repo": {"git_url": url, "branch": "main", "start_commit_sha": start, "end_commit_sha": end,
             "subdir": "", "sparse_checkout": []},
    "lm": {"instructions": instructions},
    "evaluation": evaluation,
}
write("tb_meta.json", json.dumps(meta, indent=2) + "\n")
write("LM_INSTRUCTIONS.md", instructions)
write("repo_info.json", json.dumps({"remote_urls": [url], "branch": "main", "start_commit": start,
                                    "end_commit": end, "touched_files": files}, indent=2) + "\n")
notes = os.path.join(out, "notes.md")
if spec.get("notes"):
    write("notes.md", "# Task Notes: %s\n\n## Summary\n%s\n\n## Files Changed\n%s\n\n## Notes\n%s\n"
          % (spec["title"], spec["summary"], "\n".join("- " + f for f in files), spec["notes"]))
elif os.path.exists(notes):
    os.remove(notes)
PY
  echo "$name: start $start, end $end" >&2
done

# The exact §3.6 scores of the agents that change nothing (none) and apply diff.patch (oracle).
python3 - src tasks/EXPECTED.json <<'PY'
import json, os, sys
src, out = sys.argv[1:]

def score(rubrics, tests, passed):
    per, earned = {}, 0
    for r in rubrics:
        mine = [t for t in tests if t["rubric_id"] == r["id"]]
        per[r["id"]] = sum(1 for t in mine if passed(t)) / len(mine) if mine else None
        if per[r["id"]] is not None:
            earned += per[r["id"]] * r["weight"]
    total_weight = sum(r["weight"] for r in rubrics)
    return {"total_score": earned / total_weight if total_weight else 0, "rubrics": per,
            "tests_passed": sum(1 for t in tests if passed(t)),
            "tests_failed": sum(1 for t in tests if not passed(t))}

tasks = {}
for name in sorted(os.listdir(src)):
    spec_path = os.path.join(src, name, "task.json")
    if not os.path.isfile(spec_path):
        continue
    spec = json.load(open(spec_path))
    ev = spec.get("default_evaluation") or spec
    rubrics, tests = ev["rubrics"], ev["tests"]
    tasks[name] = {
        "task_id": spec["task_id"],
        "kind": spec["kind"],
        "default_tests": bool(spec.get("created_form")),
        "rubrics": {r["id"]: r["weight"] for r in rubrics},
        "tests": {t["path"]: {"rubric_id": t["rubric_id"], "before": t["passes_before"], "after": True}
                  for t in tests},
        "none": score(rubrics, tests, lambda t: t["passes_before"]),
        "oracle": score(rubrics, tests, lambda t: True),
    }
doc = {
    "about": "Expected results per example task (key: the task folder, which is also its prepared name). "
             "tests[path].before/after: whether the test script passes on the start commit / with diff.patch "
             "applied. none/oracle: the scores of an agent that changes nothing / applies diff.patch, by the "
             "formula total = sum(score_r * weight_r over rubrics with tests) / sum(weight_r over all rubrics), "
             "score_r = passed / count of the rubric's test scripts. Weights are binary fractions or integers, "
             "so the totals are exact. Written by examples/make_examples.sh.",
    "tasks": tasks,
}
with open(out, "w") as f:
    f.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
PY
echo "wrote $here/tasks/EXPECTED.json" >&2
