"""Examples shown at the end of each command's ``--help``: the commands users type most.

One table, so that every command has some and they read alike; ``cli.build_parser`` attaches
them. Positional names are the same everywhere: ``CONFIG`` (a mergekit YAML), ``SPEC`` (a
search spec), ``STUDY`` (a results folder, a study file or a storage URL), ``OUT_DIR``,
``MODEL_DIR``, ``REPO_ID``.
"""

from __future__ import annotations

MAIN = """examples:
  mergesearch demo                                       # build the tiny demo models, search, report
  mergesearch merge configs/merges/ties.yaml out/ties    # one merge from a mergekit YAML
  mergesearch search my-search.yaml                      # search merge recipes (same command = resume)
  mergesearch status results/my-search                   # trials, scores, the best
  mergesearch COMMAND --help                             # a command's options and examples
"""

EXAMPLES: dict[str, str] = {
    "merge": """examples:
  mergesearch merge configs/merges/ties.yaml out/ties
  mergesearch merge my.yaml out/merged --dtype bfloat16 --out-shard-size 2G --threads 4
  mergesearch merge results/demo/best/mergekit_config.yml out/again   # rebuild an export
""",
    "search": """examples:
  mergesearch search configs/searches/demo.yaml              # SQLite in results/demo/study.db
  mergesearch search my.yaml --n-trials 200                  # again, with a bigger budget: resume
  mergesearch search my.yaml --n-trials 400 --n-items 50000  # stop once 50,000 items are evaluated
  mergesearch search my.yaml --workers 2                     # two local worker processes
  MERGESEARCH_STORAGE=postgresql+psycopg2://u:p@db/merges mergesearch search my.yaml --study-name run1
  mergesearch search my.yaml --allow-spec-change             # resume after changing an objective
""",
    "status": """examples:
  mergesearch status results/demo
  mergesearch status results/demo --trial 12                 # one trial: parameters, scores, config
  mergesearch status results/demo --format json | jq '.[] | select(.best)'
  mergesearch status "$MERGESEARCH_STORAGE" --study my-search --last 20
""",
    "demo": """examples:
  mergesearch demo                     # build the family once (about 3 minutes), then search
  mergesearch demo --n-trials 20 --fresh
  mergesearch demo build --seed 0 1 2  # only build families and print their scores
""",
    "dashboard": """examples:
  mergesearch dashboard results/demo                 # read-only, on 127.0.0.1, a free port
  mergesearch dashboard results/demo --port 8080
  mergesearch dashboard "$MERGESEARCH_STORAGE" --study my-search
""",
    "report": """examples:
  mergesearch report results/demo                    # results/demo/report.html and plots/
  mergesearch report results/pareto --pick knee      # detail the knee of a Pareto front
  mergesearch report "$MERGESEARCH_STORAGE" --study my-search --out reports/my-search
""",
    "export": """examples:
  mergesearch export results/demo                    # the best trial into results/demo/best
  mergesearch export results/demo --trial 12 --out models/trial12
  mergesearch export results/pareto --pick rev       # the Pareto trial best on objective rev
""",
    "upload": """examples:
  HF_TOKEN=... mergesearch upload results/demo/best you/demo-merge --private
  mergesearch upload results/demo/best you/demo-merge --create-pr --commit-message "new weights"
  mergesearch upload results/demo/best you/demo-merge --include "*.safetensors" --include "*.json"
""",
}
