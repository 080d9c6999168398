# Shared configuration, variants (ablation overlays), wildcard constraints and path helpers.
import copy
import importlib.util
import os
import re
import sys
from pathlib import Path

import yaml
from snakemake.utils import min_version, validate

min_version("9.0")

# The workflow and its jobs (local, conda or Slurm) import the package from this checkout,
# installed or not.
SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)
os.environ.update(
    PYTHONPATH=os.pathsep.join([SRC, *filter(None, [os.environ.get("PYTHONPATH")])])
)

from medmark.io import stable_hash  # noqa: E402 (needs SRC on sys.path)


configfile: "config/config.yaml"


validate(config, "../config/schema.yaml")


def _load_attack_grammar():
    """medmark.attacks.spec (pure Python) loaded by path: the workflow needs no torch import."""
    path = Path(workflow.basedir) / "src" / "medmark" / "attacks" / "spec.py"
    spec = importlib.util.spec_from_file_location("medmark_attack_grammar", path)
    grammar = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = grammar  # dataclasses look their module up there
    spec.loader.exec_module(grammar)
    return grammar


ATTACK_GRAMMAR = _load_attack_grammar()
ATTACK_REGEX = ATTACK_GRAMMAR.WILDCARD_REGEX
MODEL_ATTACK_REGEX = "|".join(
    "(?:{})".format(re.sub(r"\((?!\?)", "(?:", body))
    for body, kind, *_ in ATTACK_GRAMMAR._FAMILIES.values()
    if kind == "model"
)


def attack_kind(name):
    return ATTACK_GRAMMAR.attack_kind(name)


SCENARIOS = ["Malicious", "Ind-W", "Ind-D", "Ind-M"]
# Scenarios whose training data never saw our watermark: shared by every variant.
CLEAN_SCENARIOS = ["Ind-D", "Ind-M"]
METHODS = ["xmark"]
WATERMARKS = {"owner": "owner_key", "indep": "independent_key"}
ABLATION_DIR = Path(workflow.basedir) / "config" / "ablations"


wildcard_constraints:
    res=r"\d+",
    sres=r"\d+",
    dres=r"\d+",
    seed=r"\d+",
    arch="|".join(["resnet18", "densenet121"]),
    scenario="|".join(SCENARIOS),
    clean_scenario="|".join(CLEAN_SCENARIOS),
    method="|".join(METHODS),
    wm="|".join(WATERMARKS),
    variant=r"[A-Za-z0-9_]+",
    attack=ATTACK_REGEX,


def deep_merge(base, overlay):
    """Recursively merge ``overlay`` into a copy of ``base`` (lists are replaced)."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_variant(name):
    """The config of a variant: ``main`` or ``config/ablations/{name}.yaml`` over the main config."""
    if name == "main":
        return config
    path = ABLATION_DIR / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in ABLATION_DIR.glob("*.yaml"))
        raise ValueError(f"unknown ablation {name!r}: no {path}; known: {known}")
    overlay = yaml.safe_load(path.read_text()) or {}
    merged = deep_merge(config, overlay)
    validate(merged, "../config/schema.yaml")
    return merged


ALL_ABLATIONS = sorted(p.stem for p in ABLATION_DIR.glob("*.yaml"))
for _name in config["ablations"]:
    load_variant(
        _name
    )  # fails early, naming the file, if a requested overlay is missing
# Every overlay is validated at parse time, so a bad overlay fails before any job runs.
VARIANT_CONFIGS = {"main": config} | {
    name: load_variant(name) for name in ALL_ABLATIONS
}


def vcfg(variant):
    """Config of ``variant``: ``main`` or one of config/ablations/*.yaml."""
    if variant not in VARIANT_CONFIGS:
        raise ValueError(
            f"unknown variant {variant!r}; known: {sorted(VARIANT_CONFIGS)}"
        )
    return VARIANT_CONFIGS[variant]


def conda_env():
    return f"../envs/medmark-{config['conda_env']}.yaml"


def surrogate_tag(c=config):
    return f"{c['surrogate']['arch']}_r{c['surrogate']['resolution']}"


def suspect_data_res(c):
    """Resolution of the HDF5 a suspect trains on (and is queried with)."""
    return c["suspects"]["data_resolution"] or c["xmark"]["resolution"]


def release_resolutions(c):
    """The release is written at every preprocessed resolution plus the working one."""
    return sorted(set(c["preprocess"]["resolutions"]) | {c["xmark"]["resolution"]})


def seeds_for(c, scenario):
    n = c["suspects"][
        "malicious_seeds" if scenario == "Malicious" else "independent_seeds"
    ]
    return list(range(n))


def provenance():
    """Values recorded in HDF5 attrs and summaries (through params: part of rerun triggers)."""
    return {"seed": config["seed"], "device": config["device"]}


# Between-workflow caching (`--cache`, SNAKEMAKE_OUTPUT_CACHE): rules whose outputs are fully
# determined by inputs and params carry `cache: "omit-software"`. Snakemake forbids `benchmark:`
# on such rules, so they have none; their scripts log the wall time instead (medmark.logs).


def bench(path):
    return f"results/benchmarks/{path}.tsv"


def logf(path):
    return f"results/logs/{path}.log"


# ---- helpers of rules/data.smk ----
# Ingest (synthetic / CheXpert / NIH) -> normalised metadata -> patient-disjoint splits -> HDF5.


def ingest_inputs(wildcards):
    if config["data"]["source"] == "synthetic":
        return {"synthetic": "results/data/synthetic"}
    return {}


def ingest_source_cfg():
    """What the ingest script reads: the source and its sub-config (synthetic -> staged tree)."""
    d = config["data"]
    if d["source"] == "synthetic":
        return {
            "source": "chexpert",
            "cfg": {
                "dir": "results/data/synthetic",
                "url": None,
                "sha256": None,
                "csv": ["train.csv", "valid.csv"],
            },
        }
    return {"source": d["source"], "cfg": d[d["source"]]}


# ---- helpers of rules/xmark.smk ----
# X-Mark: saliency-conditioned generator -> clean-label watermarked release + owner secret.
# {wm} = owner (the dataset owner's key) or indep (an independent key, for Ind-W and Ind-W').


def xres(wc):
    return vcfg(wc.variant)["xmark"]["resolution"]


RELEASE_RES = release_resolutions(config)


def check_variant_resolutions():
    """Ablations may change the working resolution but not the set of released resolutions."""
    for name, c in VARIANT_CONFIGS.items():
        if release_resolutions(c) != RELEASE_RES:
            raise ValueError(
                f"ablation {name!r}: release resolutions {release_resolutions(c)} differ from "
                f"the main config's {RELEASE_RES}; overlays must not change preprocess.resolutions"
            )


check_variant_resolutions()


def generator_variant(variant):
    """The variant whose generator ``variant`` uses: ``main`` when the X-Mark section (and the
    surrogate and task it trains against) are identical, so release-only ablations (poisoning
    rate, suspect resolutions) do not retrain an identical generator."""
    c = vcfg(variant)
    same = all(c[k] == config[k] for k in ("xmark", "surrogate", "saliency", "task"))
    return "main" if same else variant


def generator_path(wc):
    return f"results/{generator_variant(wc.variant)}/xmark/{wc.wm}/generator/model.pt"


def xmark_outputs(variant, wm="owner"):
    base = f"results/{variant}/xmark/{wm}"
    gen = f"results/{generator_variant(variant)}/xmark/{wm}/generator/loss.csv"
    out = [gen, f"{base}/owner/owner.json"]
    out += [f"{base}/release/r{r}.h5" for r in RELEASE_RES]
    return out


# ---- helpers of rules/suspects.smk ----
# Suspect models under the four scenarios (docs/methods/verification.md). Malicious and Ind-W train on a
# watermarked release of a variant; Ind-M and Ind-D never see a watermark, so they are shared by
# every variant and keyed by their resolutions only.

SUSPECT_RELEASE = {"Malicious": "owner", "Ind-W": "indep"}
CLEAN_SPLIT = {"Ind-M": "release", "Ind-D": "independent"}


def suspect_resources():
    return {
        "mem_mb": 8000,
        "runtime": lambda wc, attempt: 120 * attempt,
        "gpu": 1,
        "cpus_per_gpu": 2,
    }


def suspect_model(variant, method, scenario, arch, seed):
    """Path of a suspect model for any scenario (the clean ones are shared across variants)."""
    c = vcfg(variant)
    if scenario in CLEAN_SPLIT:
        res, dres = c["suspects"]["resolution"], suspect_data_res(c)
        return f"results/clean_suspects/{scenario}/{arch}/r{res}_from{dres}/seed{seed}/model.pt"
    return f"results/{variant}/{method}/suspects/{scenario}/{arch}/seed{seed}/model.pt"


# ---- helpers of rules/verify.smk ----
# Black-box verification of every suspect (docs/methods/verification.md). Ind-Wp is DVBW's second
# reading of "independent watermark": the Malicious model queried with an independent key.

VERIFY_SCENARIOS = SCENARIOS + ["Ind-Wp"]
VERIFY_MODEL_SCENARIO = {s: s for s in SCENARIOS} | {"Ind-Wp": "Malicious"}
VERIFY_WATERMARK = {s: "owner" for s in SCENARIOS} | {"Ind-Wp": "indep"}


def verify_inputs(wc):
    c = vcfg(wc.variant)
    owner = f"results/{wc.variant}/{wc.method}/{VERIFY_WATERMARK[wc.vscenario]}/owner"
    model_scenario = VERIFY_MODEL_SCENARIO[wc.vscenario]
    if attack_kind(wc.attack) == "model":
        model = f"results/{wc.variant}/{wc.method}/attacked/{model_scenario}/{wc.arch}/seed{wc.seed}/{wc.attack}/model.pt"
    else:
        model = suspect_model(wc.variant, wc.method, model_scenario, wc.arch, wc.seed)
    return {
        "model": model,
        "owner": f"{owner}/owner.json",
        "verification": f"{owner}/verification_r{suspect_data_res(c)}.h5",
    }


def verify_targets(variant="main", method="xmark", attacks=("none",)):
    c = vcfg(variant)
    out = []
    for scenario in VERIFY_SCENARIOS:
        seeds = seeds_for(c, VERIFY_MODEL_SCENARIO[scenario])
        for arch in c["suspects"]["archs"]:
            for seed in seeds:
                for attack in attacks:
                    out.append(
                        f"results/{variant}/{method}/verify/{scenario}/{arch}/seed{seed}/{attack}/summary.json"
                    )
    return out


# ---- helpers of rules/attacks.smk ----
# Adaptive attacks (docs/methods/attacks.md): model repair produces a new suspect model; query-time input
# transforms wrap the suspect's black box inside the verify rule. Every attacked suspect goes
# through the same verification; `snakemake attacks` builds the attack table and plot.

ATTACK_KEYS = [
    "finetune_epochs",
    "finetune_lr",
    "prune_data_frac",
    "prune_epochs",
    "prune_lr",
    "distill_data_frac",
    "distill_epochs",
    "distill_lr",
    "student_arch",
]


def attack_cfg(c):
    """The AttackConfig mapping of a variant (the suspects' recipe + attack knobs)."""
    return {k: c["attacks"][k] for k in ATTACK_KEYS} | {
        "seed": c["seed"],
        "input_resolution": c["suspects"]["resolution"],
        "train": c["suspects"]["train"],
    }


def attack_names(c):
    return ["none"] + c["attacks"]["model"] + c["attacks"]["query"]


def attack_targets(variant="main", method="xmark"):
    c = vcfg(variant)
    archs = c["attacks"]["archs"] or c["suspects"]["archs"]
    out = []
    for scenario in c["attacks"]["scenarios"]:
        n = len(seeds_for(c, VERIFY_MODEL_SCENARIO[scenario]))
        for arch in archs:
            for seed in range(min(n, c["attacks"]["seeds"])):
                for attack in attack_names(c):
                    out.append(
                        f"results/{variant}/{method}/verify/{scenario}/{arch}/seed{seed}/{attack}/summary.json"
                    )
    return out


# ---- helpers of rules/report.smk ----
def ablation_targets(name):
    """What one ablation builds: its release, its watermarked suspects, verification, report."""
    return xmark_outputs(name, "owner") + [
        f"results/{name}/report/verification.md",
        f"results/{name}/report/pvalues.png",
    ]


# One target per overlay: `snakemake ablation_no_laplacian` reruns only that branch (plus any
# shared input that is missing: data, surrogate, saliency, clean suspects).


# ---- the poisoning-rate curve (report) ----
POISON_VARIANTS = [
    v
    for v in ("poison_002", "poison_005", "main", "poison_020")
    if v in VARIANT_CONFIGS
]


def poison_curve_inputs(wildcards):
    arch = config["suspects"]["archs"][0]
    return [
        f"results/{v}/xmark/verify/Malicious/{arch}/seed0/none/summary.json"
        for v in POISON_VARIANTS
    ]
