"""Report of the full suite's runs that finished before it was stopped (seed 0 of every variant, seed 1 of the first
few): verdicts of pairs where a side has one seed say the direction only (no spread to weigh it against)."""
import json, sys
from pathlib import Path
from benchmarks.ablations_report import write_report, markdown

source, output = Path(sys.argv[1]), Path(sys.argv[2])
started_epoch, stopped_epoch, load_after = float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
output.mkdir(parents=True, exist_ok=True)
(output / "configs").mkdir(exist_ok=True)
r = json.loads((source / "results.json").read_text())
seeds_of = {name: sorted(e["runs"], key=int) for name, e in r["variants"].items()}
r["suite"] = ("full, stopped at the time limit: " + "; ".join(f"{n} seeds {','.join(s)}" for n, s in seeds_of.items()))
r["seeds"] = sorted({int(s) for s in sum(seeds_of.values(), [])})
r["machine"].update(load_average_1min_after=load_after, total_seconds=stopped_epoch - started_epoch,
                    target_seconds=90 * 60, stopped_early=True)
for name, seeds in seeds_of.items():
    for s in seeds:
        cfg = source / "configs" / f"{name}-seed{s}.json"
        (output / "configs" / cfg.name).write_text(cfg.read_text())
write_report(output, r, {})
for claim in r["verdicts"].values():
    for v in claim:
        if min(len(seeds_of[v["better"]]), len(seeds_of[v["worse"]])) < 2:
            v["verdict"] = ("one seed: paper's direction" if v["effect"] > 0 else
                            "one seed: opposite direction" if v["effect"] < 0 else "one seed: no difference")
(output / "results.json").write_text(json.dumps(r, indent=1, default=str))
import re
text = re.sub(r"; samples: .*\.$", " (no sample grids: the command draws them at its end, which this run did not reach).",
              markdown(r), flags=re.M)
(output / "results.md").write_text(text.replace(
    "spread: the larger min-max range over seeds.",
    "spread: the larger min-max range over seeds (0 for a variant with one seed; such pairs are marked 'one seed')."))
print(seeds_of)
