"""The workflow parses, validates its config before any job runs, and plans the expected jobs."""

import re

import pytest
import yaml

from medmark.attacks.spec import attack_kind
from tests.slurm.workflow_helpers import REPO
from tests.workflow_utils import copy_workflow, run_snakemake


@pytest.fixture(scope="module")
def wf(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("wf"))


@pytest.fixture(scope="module")
def dry_all(wf):
    """The dry run of `all` on the embedded default (one Snakemake start for the tests that read it)."""
    return run_snakemake(wf, "-n", "--cores", "2", "all").stdout


#: Overlays whose targets are planned together (one Snakemake start): each test reads its own
#: variant's paths, which no other target of the list plans.
PLANNED_TOGETHER = ("free_mark", "mask_soft", "no_silence", "no_decoys", "epochs_x3", "poison_020")


@pytest.fixture(scope="module")
def dry_ablations(wf):
    targets = [f"ablation_{name}" for name in PLANNED_TOGETHER]
    return run_snakemake(wf, "-n", "--cores", "2", *targets).stdout


def _jobs(out: str) -> dict[str, int]:
    """Job counts from the dry-run's 'Job stats' table."""
    table = out.split("Job stats:")[1].split("\n\n")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


@pytest.mark.snakemake
def test_dry_run_lists_every_stage(dry_all):
    jobs = _jobs(dry_all)
    for rule in (
        "synthesize",
        "ingest",
        "splits",
        "preprocess",
        "surrogate",
        "saliency",
        "xmark_generator",
        "xmark_release",
        "suspect_watermarked",
        "suspect_clean",
        "verify",
        "report_tables",
        "report_pvalues",
        "report_examples",
        "xmark_quality_table",
        "xmark_proxy",
        "reference_clean",
        "xmark_diagnostics",
        "report_provenance",
    ):
        assert jobs.get(rule, 0) >= 1, rule
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    archs, seeds = len(cfg["suspects"]["archs"]), cfg["suspects"]["independent_seeds"]
    mal, keys = cfg["suspects"]["malicious_seeds"], len(cfg["xmark"]["independent_keys"])
    # per arch: Malicious seeds, Ind-W and Ind-Wp over every independent key, Ind-D and Ind-M
    assert jobs["verify"] == archs * (mal + 2 * max(keys, seeds) + 2 * seeds)
    assert jobs["suspect_clean"] == archs * 2 * seeds
    assert jobs["suspect_watermarked"] == archs * (mal + max(keys, seeds))
    # one generator per key (owner + independent) and one for the no_laplacian quality table
    assert jobs["xmark_generator"] == 1 + keys + 1


@pytest.mark.snakemake
@pytest.mark.parametrize(
    ("overlay", "key"),
    [
        ({"xmark": {"epsilon": -1}}, "epsilon"),
        ({"data": {"source": "imagenet"}}, "source"),
        ({"suspects": {"archs": ["vgg"]}}, "archs"),
        ({"verify": {"tuo": 0.1}}, "tuo"),
    ],
)
def test_bad_config_fails_before_any_job_naming_the_key(wf, tmp_path, overlay, key):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(overlay))
    proc = run_snakemake(wf, "-n", "--cores", "1", "all", "--configfile", str(bad), check=False)
    assert proc.returncode != 0
    text = proc.stdout
    assert "validating config" in text.lower() or "ValidationError" in text
    assert key in text
    assert "Job stats" not in text


@pytest.mark.snakemake
def test_ablation_target_plans_only_its_branch(wf):
    out = run_snakemake(wf, "-n", "--cores", "2", "ablation_no_laplacian").stdout
    planned = re.findall(r"^\s+output: (.+)$", out, re.M)
    paths = [p for line in planned for p in line.split(", ")]
    variant_paths = [p for p in paths if re.match(r"results/(main|[a-z0-9_]+)/xmark/", p)]
    assert variant_paths, "the ablation plans its own X-Mark jobs"
    assert all(p.startswith("results/no_laplacian/") for p in variant_paths), variant_paths
    shared = [p for p in paths if not p.startswith("results/no_laplacian/")]
    assert all(
        p.startswith(
            (
                "results/data/",
                "results/prep/",
                "results/surrogate/",
                "results/saliency/",
                "results/clean_suspects/",
            )
        )
        for p in shared
    ), shared


@pytest.mark.snakemake
@pytest.mark.parametrize(
    ("name", "own_generator"),
    [
        ("free_mark", True),
        ("mask_soft", True),
        ("no_silence", True),
        ("no_decoys", False),
        ("epochs_x3", False),
    ],
)
def test_new_ablation_overlays_plan(dry_ablations, name, own_generator):
    """Each overlay that turns an extension off builds; release-only ones reuse main's generator."""
    out = dry_ablations
    assert f"results/{name}/xmark/owner/release/r64.h5" in out
    assert (f"results/{name}/xmark/key1/generator/model.pt" in out) is own_generator


@pytest.mark.snakemake
@pytest.mark.parametrize("target", ["sweeps", "population"])
def test_sweep_and_population_targets_plan(wf, target):
    out = run_snakemake(wf, "-n", "--cores", "2", target).stdout
    jobs = _jobs(out)
    if target == "sweeps":
        assert jobs["report_sweep"] == 2
        assert "results/epochs_x3/xmark/suspects/Malicious/" in out
        assert re.search(r"results/clean_suspects/Ind-M/\w+/r64_from64_e18/", out)
    else:
        assert jobs["population_report"] == 1
        cfg = yaml.safe_load((REPO / "config/population.yaml").read_text())
        n = cfg["suspects"]["independent_seeds"]
        assert n >= 20 and jobs["verify"] == cfg["suspects"]["malicious_seeds"] + 4 * n


def test_every_ablation_overlay_has_a_target():
    out = (REPO / "rules" / "report.smk").read_text()
    assert "ablation_{_name}" in out
    assert {p.stem for p in (REPO / "config" / "ablations").glob("*.yaml")} >= {
        "no_laplacian",
        "no_saliency",
        "no_scale",
        "poison_005",
        "eps_4",
        "eps_8",
        "free_mark",
        "no_decoys",
        "no_silence",
        "mask_soft",
        "epochs_x3",
    }


@pytest.mark.snakemake
def test_release_only_ablation_reuses_the_main_generator(dry_ablations):
    out = dry_ablations
    assert "results/poison_020/xmark/owner/release/r64.h5" in out
    assert "results/poison_020/xmark/key1/generator/" not in out  # no retraining
    assert "results/main/xmark/key1/generator/model.pt" in out


@pytest.mark.snakemake
def test_per_arch_recipe_reaches_the_clean_suspects(wf, dry_all, tmp_path):
    """``suspects.train_by_arch`` overrides ``suspects.train`` for its family only; the clean
    suspects' shared path carries the epochs each family actually trains (a per-arch recipe
    that never reached the rules would leave every path at the common epochs)."""
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    schema = yaml.safe_load((REPO / "config/schema.yaml").read_text())
    common = schema["definitions"]["train"]["properties"]["epochs"]["default"]
    common = cfg["suspects"].get("train", {}).get("epochs", common)
    by_arch = cfg["suspects"]["train_by_arch"]
    out = dry_all
    for arch in cfg["suspects"]["archs"]:
        ep = by_arch.get(arch, {}).get("epochs", common)
        assert f"results/clean_suspects/Ind-M/{arch}/r64_from64_e{ep}/seed0/" in out, arch
    overlay = tmp_path / "recipe.yaml"
    overlay.write_text(yaml.safe_dump({"suspects": {"train_by_arch": {"resnet18": {"epochs": 9}}}}))
    out = run_snakemake(wf, "-n", "--cores", "2", "all", "--configfile", str(overlay)).stdout
    assert "results/clean_suspects/Ind-M/resnet18/r64_from64_e9/seed0/" in out
    # overlays merge key by key: ShuffleNetV2 keeps its own recipe
    ep = by_arch["shufflenet_v2"]["epochs"]
    assert f"results/clean_suspects/Ind-M/shufflenet_v2/r64_from64_e{ep}/seed0/" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"suspects": {"train_by_arch": {"vgg": {"epochs": 9}}}}))
    proc = run_snakemake(wf, "-n", "--cores", "1", "all", "--configfile", str(bad), check=False)
    assert proc.returncode != 0 and "train_by_arch" in proc.stdout


@pytest.mark.snakemake
def test_medlocker_target_plans_its_stages_and_stays_out_of_all(wf, dry_all):
    """`medlocker` locks against the surrogate, evaluates on every clean Ind-M suspect (reused,
    never retrained per method) and is not part of `all`."""
    out = run_snakemake(wf, "-n", "--cores", "2", "medlocker").stdout
    jobs = _jobs(out)
    for rule in (
        "medlocker_default_logo",
        "medlocker_evaluate",
        "medlocker_attacks",
        "medlocker_examples",
    ):
        assert jobs.get(rule) == 1, rule
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    assert jobs["medlocker_lock"] == 1  # medlocker.sources defaults to [surrogate]
    archs, seeds = len(cfg["suspects"]["archs"]), cfg["suspects"]["independent_seeds"]
    assert jobs["suspect_clean"] == archs * seeds
    assert "results/medlocker/surrogate/release/locked.h5" in out
    assert re.search(
        r"results/clean_suspects/Ind-M/shufflenet_v2/r64_from64_e12/seed2/model.pt", out
    )
    assert not any(rule.startswith("medlocker") for rule in _jobs(dry_all))


@pytest.mark.snakemake
def test_report_medlocker_plans_both_sections_and_stays_out_of_all(wf, dry_all):
    """`report_medlocker` builds X-Mark's report (as `all` does) and the `medlocker` target,
    then the page with both sections; neither that page nor MedLocker is part of `all`."""
    out = run_snakemake(wf, "-n", "--cores", "2", "report_medlocker").stdout
    jobs = _jobs(out)
    for rule in ("report_methods", "medlocker_lock", "medlocker_attacks", "report_tables"):
        assert jobs.get(rule) == 1, rule
    assert "results/report/methods.md" in _planned_outputs(out)
    assert "report_methods" not in _jobs(dry_all)


#: Inputs every variant and method shares.
SHARED_DIRS = ("data", "prep", "surrogate", "saliency", "clean_suspects")


def _planned_outputs(out: str) -> list[str]:
    planned = re.findall(r"^\s+output: (.+)$", out, re.M)
    return [p for line in planned for p in line.split(", ")]


@pytest.mark.snakemake
def test_baselines_target_plans_the_baselines_beside_xmark(wf):
    """`baselines` builds every registered baseline's releases (owner + independent keys),
    suspects and verification, the comparison's attacks on every method's Malicious models, one
    report card per method and the comparison; nothing of another variant."""
    from medmark.methods.registry import BASELINES

    out = run_snakemake(wf, "-n", "--cores", "2", "baselines").stdout
    jobs = _jobs(out)
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    keys = len(cfg["xmark"]["independent_keys"])
    assert jobs["method_release"] == len(BASELINES) * (1 + keys)
    assert jobs["report_comparison"] == 1
    methods_compared = 1 + len(BASELINES)
    comparison = (
        cfg["attacks"].get("comparison")
        or yaml.safe_load((REPO / "config/schema.yaml").read_text())["properties"]["attacks"][
            "properties"
        ]["comparison"]["default"]
    )
    repairs = [a for a in comparison if attack_kind(a) == "model"]
    assert repairs and len(repairs) < len(comparison)  # both kinds of attack are compared
    archs = cfg["attacks"]["archs"]
    assert jobs["attack_model"] == methods_compared * len(repairs) * len(archs)
    assert jobs["report_method"] == methods_compared
    paths = _planned_outputs(out)
    methods = {m[1] for p in paths if (m := re.match(r"results/main/(\w+)/", p))}
    assert methods - {"report"} == {"xmark", *BASELINES}
    shared = ("results/main/", *(f"results/{d}/" for d in SHARED_DIRS))
    assert all(p.startswith(shared) for p in paths), [p for p in paths if not p.startswith(shared)]
    for m in BASELINES:
        assert f"results/main/{m}/owner/release/r64.h5" in paths
        assert f"results/main/{m}/suspects/Malicious/resnet18/seed0/model.pt" in paths
        assert f"results/main/{m}/verify/Ind-W/resnet18/seed0/none/summary.json" in paths
        assert f"results/main/{m}/report/card.md" in paths
        for attack in comparison:
            assert (
                f"results/main/{m}/verify/Malicious/resnet18/seed0/{attack}/summary.json" in paths
            )
        for attack in repairs:
            assert f"results/main/{m}/attacked/Malicious/resnet18/seed0/{attack}/model.pt" in paths


@pytest.mark.snakemake
def test_bad_attack_names_are_all_reported_before_any_job(wf, tmp_path):
    """Unknown attacks, an attack of the wrong kind in `model:`/`query:` and `none` in the
    comparison: one error naming every bad entry, no job planned."""
    bad = tmp_path / "attacks.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "attacks": {
                    "model": ["prune_0.5", "jpeg_q50"],
                    "query": ["blurr_s1"],
                    "comparison": ["none", "finetune_frac0.1", "jpeg_q500"],
                }
            }
        )
    )
    proc = run_snakemake(wf, "-n", "--cores", "1", "all", "--configfile", str(bad), check=False)
    text = proc.stdout
    assert proc.returncode != 0 and "Job stats" not in text
    for entry in (
        "attacks.model[1] = 'jpeg_q50'",
        "attacks.query[0] = 'blurr_s1'",
        "attacks.comparison[0] = 'none'",
        "attacks.comparison[2] = 'jpeg_q500'",
    ):
        assert entry in text, entry
    assert "attacks.model[0]" not in text and "attacks.comparison[1]" not in text


@pytest.mark.snakemake
def test_a_new_method_needs_a_registry_entry_and_no_rule_change(tmp_path):
    """Register a method (and its settings) in a scratch copy, list it in `methods:`: the rules,
    untouched, release, train, verify and report it."""
    wf2 = copy_workflow(tmp_path / "wf")
    rules_before = {p.name: p.read_text() for p in (wf2 / "rules").iterdir()}
    reg = wf2 / "src" / "medmark" / "methods" / "registry.py"
    text = reg.read_text()
    anchor = "METHODS: dict[str, MethodEntry] = {\n"
    assert anchor in text
    reg.write_text(
        text.replace(
            anchor,
            anchor + '    "patch2": MethodEntry("medmark.methods.badnets:BadNets", "generic", '
            '"poison", "targeted", False),\n',
        )
    )
    schema = yaml.safe_load((wf2 / "config" / "schema.yaml").read_text())
    base = schema["properties"]["baselines"]["properties"]
    base["patch2"] = base["badnets"]
    (wf2 / "config" / "schema.yaml").write_text(yaml.safe_dump(schema, sort_keys=False))
    overlay = tmp_path / "methods.yaml"
    overlay.write_text(yaml.safe_dump({"methods": ["xmark", "patch2"]}))
    out = run_snakemake(wf2, "-n", "--cores", "2", "all", "--configfile", str(overlay)).stdout
    paths = _planned_outputs(out)
    assert "results/main/patch2/owner/release/r64.h5" in paths
    assert "results/main/patch2/indep0/owner/owner.json" in paths
    assert "results/main/patch2/verify/Malicious/resnet18/seed0/none/summary.json" in paths
    assert {p.name: p.read_text() for p in (wf2 / "rules").iterdir()} == rules_before
    # an unregistered name fails at parse time, naming the registry
    overlay.write_text(yaml.safe_dump({"methods": ["xmark", "nonesuch"]}))
    proc = run_snakemake(
        wf2, "-n", "--cores", "1", "all", "--configfile", str(overlay), check=False
    )
    assert proc.returncode != 0 and "registry.py" in proc.stdout
