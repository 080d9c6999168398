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

from medmark.cluster import rule_resources  # noqa: E402 (needs SRC on sys.path)
from medmark.io import stable_hash  # noqa: E402


configfile: "config/config.yaml"


validate(config, "../config/schema.yaml")


def _load_by_path(name, relpath):
    """A pure-Python module of src/medmark loaded by path: the workflow needs no torch import."""
    path = Path(workflow.basedir) / "src" / "medmark" / relpath
    spec = importlib.util.spec_from_file_location(name, path)
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = loaded  # dataclasses look their module up there
    spec.loader.exec_module(loaded)
    return loaded


ATTACK_GRAMMAR = _load_by_path("medmark_attack_grammar", "attacks/spec.py")
# The watermark methods (src/medmark/methods/registry.py): the {method} wildcard's vocabulary.
METHOD_REGISTRY = _load_by_path("medmark_method_registry", "methods/registry.py")
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
METHODS = list(METHOD_REGISTRY.METHODS)
# Methods released by rules/release.smk (X-Mark has its own generator and release rules).
GENERIC_METHODS = METHOD_REGISTRY.GENERIC
BASELINES = METHOD_REGISTRY.BASELINES
# {wm}: "owner" (the owner's key) or "indep{i}" (the i-th of xmark.independent_keys).
WM_REGEX = r"owner|indep\d+"


def wm_key(c, wm):
    """The key of watermark ``wm`` in config ``c`` (owner_key or independent_keys[i])."""
    if wm == "owner":
        return c["xmark"]["owner_key"]
    keys = c["xmark"]["independent_keys"]
    i = int(wm.removeprefix("indep"))
    if i >= len(keys):
        raise ValueError(
            f"{wm}: only {len(keys)} xmark.independent_keys are configured"
        )
    return keys[i]


def indep_wms(c):
    return [f"indep{i}" for i in range(len(c["xmark"]["independent_keys"]))]


ABLATION_DIR = Path(workflow.basedir) / "config" / "ablations"


wildcard_constraints:
    res=r"\d+",
    sres=r"\d+",
    dres=r"\d+",
    epochs=r"\d+",
    seed=r"\d+",
    arch="|".join(["resnet18", "densenet121", "shufflenet_v2"]),
    scenario="|".join(SCENARIOS),
    clean_scenario="|".join(CLEAN_SCENARIOS),
    method="|".join(METHODS),
    wm=WM_REGEX,
    key=r"\d+",
    # not a lock's results directory (results/medlocker/report/... is no variant's report)
    variant=r"(?!(?:%s)\b)[A-Za-z0-9_]+"
    % "|".join(e.results for e in METHOD_REGISTRY.LOCKS.values()),
    attack=ATTACK_REGEX,


# ---- per-method paths: every results/{variant}/{method}/... path is built here ----
METHOD_ROOT = "results/{variant}/{method}"


def mpattern(tail, **fixed):
    """The path pattern ``results/{variant}/{method}/{tail}`` with ``fixed`` wildcards filled
    (the others stay ``{name}`` for Snakemake)."""
    out = f"{METHOD_ROOT}/{tail}"
    for name, value in fixed.items():
        out = out.replace(f"{{{name}}}", str(value))
    return out


def mfile(variant, method, tail):
    """A concrete path ``results/{variant}/{method}/{tail}`` (``tail`` without wildcards)."""
    return mpattern(tail, variant=variant, method=method)


def mlog(tail):
    """Log file of a per-method job (results/logs/{variant}/{method}/{tail}.log)."""
    return logf(mpattern(tail).removeprefix("results/"))


def mbench(tail):
    """Benchmark file of a per-method job."""
    return bench(mpattern(tail).removeprefix("results/"))


def release_outputs(**fixed):
    """Output patterns of the release rules (any method); HDF5 per resolution, the owner's secret,
    its verification files and the release quality; ``{wm}`` and unfilled wildcards stay.
    """
    return {
        "release": [
            mpattern(f"{{wm}}/release/r{res}.h5", **fixed) for res in RELEASE_RES
        ],
        "owner": mpattern("{wm}/owner/owner.json", **fixed),
        "verification": [
            mpattern(f"{{wm}}/owner/verification_r{res}.h5", **fixed)
            for res in RELEASE_RES
        ],
        "quality": mpattern("{wm}/owner/quality.csv", **fixed),
    }


def release_params(**fixed):
    """Params of a release rule (any method) besides ``method`` and ``method_cfg``."""
    return {
        "key": lambda wc: wm_key(vcfg(wc.variant), wc.wm),
        "resolutions": RELEASE_RES,
        "working_resolution": xres,
        "release_dir": mpattern("{wm}/release", **fixed),
        "owner_dir": mpattern("{wm}/owner", **fixed),
        # An independent key's release only feeds Ind-W suspects, which read its HDF5: no tree.
        "release_cfg": lambda wc: vcfg(wc.variant)["release"]
        | ({} if wc.wm == "owner" else {"image_tree": False}),
        # What the owner's verification files need; tau, key_tau and alpha are read at
        # verification time only (rules/verify.smk), so changing them reruns no release.
        "verify_cfg": lambda wc: {
            k: vcfg(wc.variant)["verify"][k] for k in ("n_images", "seed")
        },
        "task": config["task"],
        "device": config["device"],
    }


def generic_release_inputs(wc):
    """Inputs of the generic release rule: prep and metadata, the surrogate when the method's
    registry entry asks for it."""
    out = {
        "prep": [f"results/prep/r{res}.h5" for res in RELEASE_RES],
        "metadata": "results/data/metadata.csv",
    }
    if METHOD_REGISTRY.METHODS[wc.method].surrogate:
        out["surrogate"] = f"results/surrogate/{surrogate_tag()}/model.pt"
    return out


def generic_method_cfg(wc):
    """A generic method's config section (+ the surrogate's input resolution when it uses it)."""
    entry = METHOD_REGISTRY.METHODS[wc.method]
    cfg = vcfg(wc.variant)["baselines"][wc.method]
    if entry.surrogate:
        cfg = cfg | {"surrogate_resolution": config["surrogate"]["resolution"]}
    if entry.xmark_section:
        cfg = cfg | {"xmark": vcfg(wc.variant)["xmark"]}
    return cfg


def check_methods():
    """Every configured method is registered (the schema cannot see the registry)."""
    for name, c in VARIANT_CONFIGS.items():
        unknown = sorted(set(c["methods"]) - set(METHODS))
        locks = sorted(set(unknown) & set(METHOD_REGISTRY.LOCKS))
        if locks:
            raise ValueError(
                f"variant {name!r}: {locks} are inference-time locks, not watermarks "
                f"(src/medmark/methods/registry.py, LOCKS): run their own target, e.g. "
                f"`snakemake medlocker`, not `methods:`"
            )
        if unknown:
            raise ValueError(
                f"variant {name!r}: methods {unknown} are not registered in "
                f"src/medmark/methods/registry.py (known: {METHODS})"
            )


def deep_merge(base, overlay):
    """Recursively merge ``overlay`` into a copy of ``base`` (lists are replaced)."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


POPULATION_OVERLAY = Path(workflow.basedir) / "config" / "population.yaml"


def load_variant(name):
    """The config of a variant: ``main``, ``population`` (config/population.yaml) or
    ``config/ablations/{name}.yaml``, each over the main config."""
    if name == "main":
        return config
    path = POPULATION_OVERLAY if name == "population" else ABLATION_DIR / f"{name}.yaml"
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
VARIANT_CONFIGS = {"main": config, "population": load_variant("population")} | {
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
    """Seeds of a scenario's population (per architecture). Ind-W seed s trains (with seed s) on
    the release of independent key s mod n_keys and Ind-Wp seed s queries the Malicious model of
    seed s mod malicious_seeds with independent key s mod n_keys, so both populations cover every
    independent key: max(n_keys, independent_seeds) models each."""
    n_keys = len(c["xmark"]["independent_keys"])
    s = c["suspects"]
    if scenario == "Malicious":
        return list(range(s["malicious_seeds"]))
    if scenario in ("Ind-W", "Ind-Wp"):
        return list(range(max(n_keys, s["independent_seeds"])))
    return list(range(s["independent_seeds"]))


def check_keys():
    """Independent keys must differ from the owner's (else Ind-W would be Malicious)."""
    for name, c in VARIANT_CONFIGS.items():
        x = c["xmark"]
        if x["owner_key"] in x["independent_keys"]:
            raise ValueError(
                f"variant {name!r}: xmark.independent_keys {x['independent_keys']} contains "
                f"the owner_key {x['owner_key']}"
            )


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
check_keys()
check_methods()


# Keys do not enter a generator's identity beyond its own key: decoys and key lists only shape the
# release and verification, so they are left out when deciding whether a variant can reuse main's.
GENERATOR_NEUTRAL_KEYS = ("owner_key", "independent_keys", "decoys")


def _generator_section(c):
    return {k: v for k, v in c["xmark"].items() if k not in GENERATOR_NEUTRAL_KEYS}


def generator_variant(variant):
    """The variant whose generators ``variant`` uses: ``main`` when the X-Mark section (and the
    surrogate and task it trains against) are identical up to keys and decoys, so release-only
    ablations (poisoning rate, decoys, suspect recipes) do not retrain an identical generator.
    """
    c = vcfg(variant)
    same = _generator_section(c) == _generator_section(config) and all(
        c[k] == config[k] for k in ("surrogate", "saliency", "task")
    )
    return "main" if same else variant


def generator_dir(variant, key):
    """One generator per (generator variant, key): results/{gvariant}/xmark/key{key}/generator."""
    return mfile(generator_variant(variant), "xmark", f"key{key}/generator")


def generator_path(wc):
    return f"{generator_dir(wc.variant, wm_key(vcfg(wc.variant), wc.wm))}/model.pt"


def suspect_train_cfg(c, arch):
    """The suspects' recipe for ``arch``: ``suspects.train`` updated by ``suspects.train_by_arch``
    (ShuffleNetV2's depthwise-separable blocks need a higher rate and more epochs).
    """
    return c["suspects"]["train"] | c["suspects"]["train_by_arch"].get(arch, {})


def diagnostics_train_cfg(c, arch):
    """The suspects' recipe for ``arch``, shortened to ``diagnostics.epochs``."""
    return suspect_train_cfg(c, arch) | {"epochs": c["diagnostics"]["epochs"]}


def reference_model(c, arch):
    res, dres = c["suspects"]["resolution"], suspect_data_res(c)
    return f"results/reference/{arch}/r{res}_from{dres}/model.pt"


def method_outputs(variant, method, wm="owner"):
    """What one release of ``method`` under watermark ``wm`` builds (X-Mark: its generator too)."""
    out = release_outputs(variant=variant, method=method, wm=wm)
    files = [out["owner"], *out["release"]]
    if method == "xmark":
        files.insert(0, f"{generator_dir(variant, wm_key(vcfg(variant), wm))}/loss.csv")
    return files


def xmark_outputs(variant, wm="owner"):
    return method_outputs(variant, "xmark", wm)


# ---- helpers of rules/suspects.smk ----
# Suspect models under the four scenarios (docs/methods/verification.md). Malicious and Ind-W train on a
# watermarked release of a variant; Ind-M and Ind-D never see a watermark, so they are shared by
# every variant and keyed by their resolutions only.


def suspect_release_wm(c, scenario, seed):
    """The watermark whose release a Malicious / Ind-W suspect trains on."""
    if scenario == "Malicious":
        return "owner"
    return f"indep{int(seed) % len(c['xmark']['independent_keys'])}"


CLEAN_SPLIT = {"Ind-M": "release", "Ind-D": "independent"}


def classifier_resolution(wc):
    """The largest image side a job training or querying a suspect-like classifier holds: its
    data's and its input's (the job's own wildcards, else its variant's config)."""
    if "res" in wc.keys() and "dres" in wc.keys():
        return max(int(wc.res), int(wc.dres))
    c = vcfg(wc.variant)
    return max(c["suspects"]["resolution"], suspect_data_res(c))


def suspect_resources():
    """Every classifier-training rule's request (docs/cluster.md, CheXpert-scale plan)."""
    return rule_resources(
        "suspect",
        config["train_threads"],
        config["suspects"]["train"]["num_workers"],
        resolution=classifier_resolution,
    )


def suspect_model(variant, method, scenario, arch, seed):
    """Path of a suspect model for any scenario (the clean ones are shared across variants)."""
    c = vcfg(variant)
    if scenario in CLEAN_SPLIT:
        res, dres = c["suspects"]["resolution"], suspect_data_res(c)
        ep = suspect_train_cfg(c, arch)["epochs"]
        return f"results/clean_suspects/{scenario}/{arch}/r{res}_from{dres}_e{ep}/seed{seed}/model.pt"
    return mfile(variant, method, f"suspects/{scenario}/{arch}/seed{seed}/model.pt")


# ---- helpers of rules/verify.smk ----
# Black-box verification of every suspect (docs/methods/verification.md). Ind-Wp is DVBW's second
# reading of "independent watermark": the Malicious model queried with an independent key.

VERIFY_SCENARIOS = SCENARIOS + ["Ind-Wp"]
VERIFY_MODEL_SCENARIO = {s: s for s in SCENARIOS} | {"Ind-Wp": "Malicious"}


def verify_wm(c, vscenario, seed):
    """Ind-Wp seed s queries the Malicious model of seed s with independent key s (mod n)."""
    if vscenario != "Ind-Wp":
        return "owner"
    return f"indep{int(seed) % len(c['xmark']['independent_keys'])}"


def verify_inputs(wc):
    c = vcfg(wc.variant)
    owner = mfile(wc.variant, wc.method, f"{verify_wm(c, wc.vscenario, wc.seed)}/owner")
    model_scenario = VERIFY_MODEL_SCENARIO[wc.vscenario]
    mseed = (
        int(wc.seed) % c["suspects"]["malicious_seeds"]
        if wc.vscenario == "Ind-Wp"
        else wc.seed
    )
    if attack_kind(wc.attack) == "model":
        model = mfile(
            wc.variant,
            wc.method,
            f"attacked/{model_scenario}/{wc.arch}/seed{mseed}/{wc.attack}/model.pt",
        )
    else:
        model = suspect_model(wc.variant, wc.method, model_scenario, wc.arch, mseed)
    return {
        "model": model,
        "owner": f"{owner}/owner.json",
        "verification": f"{owner}/verification_r{suspect_data_res(c)}.h5",
    }


def verify_targets(variant="main", method="xmark", attacks=("none",)):
    c = vcfg(variant)
    out = []
    for scenario in VERIFY_SCENARIOS:
        seeds = seeds_for(c, scenario)
        for arch in c["suspects"]["archs"]:
            for seed in seeds:
                for attack in attacks:
                    out.append(
                        mfile(
                            variant,
                            method,
                            f"verify/{scenario}/{arch}/seed{seed}/{attack}/summary.json",
                        )
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


def check_attacks():
    """Every attack name of every variant parses (src/medmark/attacks/spec.py), the ``model`` and
    ``query`` lists hold attacks of their kind and ``comparison`` holds attacks (not ``none``):
    one error listing every bad entry, before any job runs."""
    bad = []
    for name, c in VARIANT_CONFIGS.items():
        a = c["attacks"]
        for field, kinds in (
            ("model", {"model"}),
            ("query", {"query"}),
            ("comparison", {"model", "query"}),
        ):
            for i, text in enumerate(a[field]):
                where = f"variant {name!r}: attacks.{field}[{i}] = {text!r}"
                try:
                    kind = attack_kind(text)
                except ValueError as e:
                    bad.append(f"{where}: {str(e).splitlines()[0]}")
                    continue
                if kind not in kinds:
                    bad.append(f"{where}: a {kind!r} attack, expected {sorted(kinds)}")
    if bad:
        raise ValueError(
            "bad attack names (grammar: src/medmark/attacks/spec.py):\n  "
            + "\n  ".join(bad)
        )


check_attacks()


def attack_targets(variant="main", method="xmark", scenarios=None, attacks=None):
    """Verdicts of attacked suspects: ``attacks`` (default: none + attacks.model + .query) on
    the first ``attacks.seeds`` models of ``scenarios`` (default attacks.scenarios) and of
    ``attacks.archs``."""
    c = vcfg(variant)
    archs = c["attacks"]["archs"] or c["suspects"]["archs"]
    out = []
    for scenario in scenarios or c["attacks"]["scenarios"]:
        n = len(seeds_for(c, scenario))
        for arch in archs:
            for seed in range(min(n, c["attacks"]["seeds"])):
                for attack in attacks or attack_names(c):
                    out.append(
                        mfile(
                            variant,
                            method,
                            f"verify/{scenario}/{arch}/seed{seed}/{attack}/summary.json",
                        )
                    )
    return out


def comparison_attack_targets(variant, method):
    """The methods' comparison under attack: ``attacks.comparison`` on ``method``'s Malicious
    models."""
    return attack_targets(
        variant, method, ["Malicious"], vcfg(variant)["attacks"]["comparison"]
    )


# ---- helpers of rules/report.smk ----
def ablation_targets(name):
    """What one ablation builds: its release, its watermarked suspects, verification, report."""
    return xmark_outputs(name, "owner") + [
        f"results/{name}/report/verification.md",
        f"results/{name}/report/pvalues.png",
    ]


# One target per overlay: `snakemake ablation_no_laplacian` reruns only that branch (plus any
# shared input that is missing: data, surrogate, saliency, clean suspects).


# ---- sweeps (report): poisoning rate and training length, Malicious beside the independents ----
SWEEPS = {
    "poison": {
        "variants": ["poison_002", "poison_005", "main", "poison_020"],
        "column": "poison_rate",
        "xlabel": "poisoning rate γ",
        "value": lambda c: c["release"]["poison_rate"],
        "scenarios": ["Malicious", "Ind-W", "Ind-M"],
        "seeds": 2,
    },
    "epochs": {
        "variants": ["main", "epochs_x3"],
        "column": "epochs",
        "xlabel": "suspect training epochs",
        "value": lambda c: suspect_train_cfg(c, config["suspects"]["archs"][0])[
            "epochs"
        ],
        "scenarios": ["Malicious", "Ind-W", "Ind-M", "Ind-D"],
        "seeds": 1,
    },
}


def sweep_inputs(sweep):
    """Verdicts of the first ``seeds`` models of the sweep's scenarios, first suspect arch, at
    each point (a 2-core budget: the populations of `all` and `population` are the larger ones).
    """
    sw = SWEEPS[sweep]
    arch = config["suspects"]["archs"][0]
    out = []
    for v in sw["variants"]:
        c = vcfg(v)
        for scen in sw["scenarios"]:
            for seed in seeds_for(c, scen)[: sw["seeds"]]:
                out.append(
                    mfile(
                        v, "xmark", f"verify/{scen}/{arch}/seed{seed}/none/summary.json"
                    )
                )
    return out


def sweep_values(sweep):
    sw = SWEEPS[sweep]
    return {v: sw["value"](vcfg(v)) for v in sw["variants"]}


# ---- helpers of rules/medlocker.smk ----
# MedLocker (docs/methods/medlocker.md): lock against a source model, evaluate on the surrogate and
# every clean Ind-M suspect, attacks, examples.

# The inference-time lock these rules run (src/medmark/methods/registry.py, LOCKS).
ML_LOCK = "medlocker"
ML_ENTRY = METHOD_REGISTRY.LOCKS[ML_LOCK]
ML = config[ML_ENTRY.config]
ML_RES = suspect_data_res(
    config
)  # the images the Ind-M suspects train on and are queried with


def medlocker_logo():
    return ML["logo"] or "results/medlocker/logo.png"


def medlocker_model(name):
    """Path and input resolution of a MedLocker model: the surrogate or an Ind-M suspect."""
    if name == "surrogate":
        return (
            f"results/surrogate/{surrogate_tag()}/model.pt",
            config["surrogate"]["resolution"],
        )
    arch, seed = re.fullmatch(r"(\w+?)(?:_seed(\d+))?", name).groups()
    path = suspect_model("main", "xmark", "Ind-M", arch, int(seed or 0))
    return path, config["suspects"]["resolution"]


def medlocker_targets():
    """White-box (the surrogate) and transfer targets: every clean Ind-M arch and seed."""
    return ["surrogate"] + [
        f"{arch}_seed{s}"
        for arch in config["suspects"]["archs"]
        for s in seeds_for(config, "Ind-M")
    ]


def medlocker_lock(source):
    base = f"results/medlocker/{source}"
    return {
        "locked": f"{base}/release/locked.h5",
        "random": f"{base}/owner/random.h5",
        "params": f"{base}/owner/params.csv",
        "model": medlocker_model(source)[0],
    }


def medlocker_lock_outputs():
    """The lock's release (what ships: the locked HDF5, the CheXpert tree when
    ``release.image_tree``, certificate and public key) and the owner's directory beside it
    (src/medmark/methods/lock.py, ``write_locked_release``)."""
    rel = f"results/{ML_ENTRY.results}/{{ml_source}}/release"
    own = f"results/{ML_ENTRY.results}/{{ml_source}}/owner"
    out = {
        "locked": f"{rel}/locked.h5",
        "certificate": f"{rel}/certificate.json",
        "public_key": f"{rel}/public_key.pem",
        "owner": f"{own}/owner.json",
        "random": f"{own}/random.h5",
        "params": f"{own}/params.csv",
        "queries": f"{own}/queries.csv",
        "signing_key": f"{own}/signing_key.pem",
        "restore_key": f"{own}/restore_key.hex",
        "restore": directory(f"{own}/restore"),
    }
    if config["release"]["image_tree"]:
        out["tree"] = directory(f"{rel}/CheXpert-v1.0-small-{ML_LOCK}")
    return out


def medlocker_lock_inputs(wc):
    out = {
        "prep": f"results/prep/r{ML_RES}.h5",
        "boxes": "results/data/boxes.csv",
        "metadata": "results/data/metadata.csv",
        "model": medlocker_model(wc.ml_source)[0],
        "logo": medlocker_logo(),
    }
    if ML["boxes"] == "saliency":
        out["saliency"] = f"results/saliency/{surrogate_tag()}/r{ML_RES}.h5"
    return out
