# Shared configuration, variants (ablation overlays), wildcard constraints and path helpers.
import copy
import os
from pathlib import Path

import yaml
from medmark.io import stable_hash
from snakemake.utils import min_version, validate

min_version("9.0")

# Jobs (local, conda or Slurm) import the package from this checkout, installed or not.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(Path(workflow.basedir) / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
)


configfile: "config/config.yaml"


validate(config, "../config/schema.yaml")

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
    attack=r"[A-Za-z0-9_.]+",


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
    load_variant(_name)  # fails early, naming the file, if a requested overlay is missing
# Every overlay is validated at parse time, so a bad overlay fails before any job runs.
VARIANT_CONFIGS = {"main": config} | {name: load_variant(name) for name in ALL_ABLATIONS}


def vcfg(variant):
    """Config of ``variant``: ``main`` or one of config/ablations/*.yaml."""
    if variant not in VARIANT_CONFIGS:
        raise ValueError(f"unknown variant {variant!r}; known: {sorted(VARIANT_CONFIGS)}")
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
    n = c["suspects"]["malicious_seeds" if scenario == "Malicious" else "independent_seeds"]
    return list(range(n))


def provenance():
    """Values recorded in HDF5 attrs and summaries (through params: part of rerun triggers)."""
    return {"seed": config["seed"], "device": config["device"]}


def bench(path):
    return f"results/benchmarks/{path}.tsv"


def logf(path):
    return f"results/logs/{path}.log"


# Between-workflow caching (`--cache`, SNAKEMAKE_OUTPUT_CACHE). Snakemake forbids `benchmark:` on
# a rule eligible for caching, so cacheable rules write their benchmark only when caching is off.
CACHING = workflow.enable_cache
CACHE = "omit-software" if CACHING else False


def cbench(path):
    """Benchmark path of a cacheable rule ("" = none while --cache is on)."""
    return "" if CACHING else bench(path)
