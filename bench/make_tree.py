# Writes a deterministic tree of small source-like files: make_tree.py DIR SIZE_MB
import os, random, sys
root, size_mb = sys.argv[1], int(sys.argv[2])
rng = random.Random(42)
words = ("def class return import self value result index count buffer error data path name "
         "for while if else elif try except with open read write list dict len range print "
         "config task sandbox run agent score rubric test assert None True False").split()
target = size_mb * 1024 * 1024
written, n = 0, 0
while written < target:
    d = os.path.join(root, "pkg%02d" % (n % 40), "mod%03d" % (n % 300))
    os.makedirs(d, exist_ok=True)
    lines = []
    for _ in range(rng.randint(20, 200)):
        indent = "    " * rng.randint(0, 3)
        lines.append(indent + " ".join(rng.choice(words) for _ in range(rng.randint(3, 12))))
    text = "\n".join(lines) + "\n"
    with open(os.path.join(d, "file%05d.py" % n), "w") as f:
        f.write(text)
    written += len(text)
    n += 1
