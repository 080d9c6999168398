# Provenance (src/medmark/provenance.py): the config files the per-job records hash, and the code
# hash in the params of every cached rule. Snakemake's cache key covers a rule's script but not the
# package it imports; with `code=script_code(...)` an edit of a module the script imports
# (directly or not) changes the key and the job is recomputed, while an edit elsewhere does not.
import functools

from medmark.provenance import CONFIGFILES_VAR, code_hash

os.environ[CONFIGFILES_VAR] = os.pathsep.join(str(f) for f in workflow.configfiles)


@functools.cache
def script_code(name):
    """Hash of scripts/{name}.py and of every medmark module it imports."""
    return code_hash(
        Path(workflow.basedir) / "scripts" / f"{name}.py", Path(SRC) / "medmark"
    )
