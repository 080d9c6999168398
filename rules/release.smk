# Releases of the methods without a rule of their own (src/medmark/methods/registry.py, release
# "generic": the paper's baselines): fit the method's secret from the owner's release split,
# then write the release, the owner's secret and the release quality like X-Mark's release.


rule method_release:
    input:
        unpack(generic_release_inputs),
    output:
        **release_outputs(),
    log:
        mlog("{wm}/release"),
    benchmark:
        mbench("{wm}/release")
    wildcard_constraints:
        method="|".join(GENERIC_METHODS),
    conda:
        conda_env()
    threads: 1
    resources:
        **rule_resources("release", 1, resolution=max(RELEASE_RES)),
    params:
        **release_params(),
        method=lambda wc: wc.method,
        method_cfg=generic_method_cfg,
    script:
        "../scripts/release.py"
