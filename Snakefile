# medmark: watermark a medical-imaging dataset before release and verify, black-box, that a
# suspect model was trained on it. Stages live in rules/*.smk; logic lives in src/medmark/.
# Embedded default: `snakemake --cores 2 all` (see README.md).


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/saliency.smk"
include: "rules/xmark.smk"
include: "rules/suspects.smk"
include: "rules/verify.smk"
include: "rules/report.smk"


rule all:
    input:
        rules.data_all.input,
        rules.xmark_all.input,
        rules.verify_all.input,
        rules.report_all.input,
