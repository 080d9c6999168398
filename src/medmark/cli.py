"""``medmark`` command line (architecture.md: package map, ``medmark.cli``).

``medmark audit [results/]`` checks a results tree against its provenance records
(:mod:`medmark.audit`): exit 0 clean, 1 findings, 2 unreadable input.

``medmark verify --model FILE --owner-dir DIR --out verdict.json`` queries a suspect model
(TorchScript ``.pt``/``.pth`` or ONNX ``.onnx``) as a black box with the owner's verification
images and writes the verdict (docs/methods/verification.md: Tests). ``--tau``,
``--key-tau`` and ``--alpha`` default to ``verify.tau``, ``verify.key_tau`` and ``verify.alpha``
of config/schema.yaml (the owner's files do not fix them).
Exit status: 0 when a verdict was written (whatever it is), 2 on bad input (message on stderr,
no traceback).

``medmark certificate verify --certificate C --public-key K --release R.h5`` checks a copy of a
MedLocker release against the owner's signed certificate (docs/methods/medlocker.md); with
``--originals`` and ``--logo`` it also re-renders each locked image. ``medmark unlock --locked
R.h5 --packages DIR --key KEY --out O.h5`` restores the originals bit for bit (one PNG with
``--image-id``). Exit status of both: 0 valid / restored, 1 refused (bad signature, changed or
missing images, wrong key, tampered or foreign package; the reason on stderr), 2 bad input.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from medmark.errors import DataFormatError
from medmark.schema import section_defaults

#: Where ``medmark verify`` takes tau, key_tau and alpha from when their options are not given.
SCHEMA_SOURCE = "config/schema.yaml"

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_BAD_INPUT = 2


TEMP_NAME_EXTRA = 16  # ".{name}." + 8 random characters + ".tmp" of the temporary files


def per_image_path(out: Path) -> Path:
    """The per-image CSV written beside ``out``: ``verdict.json`` → ``verdict.per_image.csv``."""
    return out.with_name(f"{out.stem}.per_image.csv")


def check_outputs(out: Path, protected: dict[str, Path]) -> None:
    """Refuse an ``--out`` that cannot be written or would overwrite an input, before any work.

    ``protected`` maps a description to a file or directory (the suspect model, the owner
    directory) that neither ``out`` nor its per-image CSV may be or lie inside.
    """
    pair = (out, per_image_path(out))
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise DataFormatError(
            f"{out} lies under {ancestor}, which is a file, not a directory", field="--out"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise DataFormatError(f"cannot write into {ancestor}", field="--out")
    try:
        name_max = os.pathconf(ancestor, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    for path in pair:
        n = len(os.fsencode(path.name))
        if n + TEMP_NAME_EXTRA > name_max:
            raise DataFormatError(
                f"file name {path.name[:40]}… is too long ({n} bytes; at most "
                f"{name_max - TEMP_NAME_EXTRA} here, room kept for the temporary file)",
                field="--out",
            )
    for path in pair:
        real = path.resolve()
        for what, p in protected.items():
            pr = p.resolve()
            if real == pr or (pr.is_dir() and real.is_relative_to(pr)):
                raise DataFormatError(
                    f"{path} would overwrite {'' if real == pr else 'a file inside '}{what} "
                    f"({p}); choose another --out",
                    field="--out",
                )
        if path.is_dir():
            raise DataFormatError(f"{path} is a directory; --out takes a file name", field="--out")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medmark", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser(
        "verify",
        help="black-box ownership verification of a suspect model",
        description="Query a suspect model with the owner's clean and watermarked "
        "verification images and test H1: mean(P(y_t|x') - P(y_t|x)) > tau.",
    )
    v.add_argument(
        "--model", required=True, type=Path, help="suspect: .pt/.pth TorchScript or .onnx"
    )
    v.add_argument(
        "--owner-dir",
        required=True,
        type=Path,
        help="owner directory with owner.json and verification.h5",
    )
    v.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="use the owner's verification images at this resolution (verification_r{R}.h5); "
        "default: the file owner.json names",
    )
    v.add_argument(
        "--verification-file",
        type=Path,
        default=None,
        help="explicit verification HDF5 (overrides --resolution)",
    )
    v.add_argument(
        "--out",
        required=True,
        type=Path,
        help="verdict JSON; the per-image CSV is written beside it (<stem>.per_image.csv)",
    )
    v.add_argument(
        "--output",
        choices=("probs", "logits"),
        default="probs",
        help="what the model returns (default probs; logits are softmaxed)",
    )
    v.add_argument(
        "--hard-label",
        action="store_true",
        help="use only predicted labels (Wilcoxon signed-rank test)",
    )
    verify_defaults = section_defaults("verify")
    v.add_argument(
        "--tau",
        type=float,
        default=None,
        help=f"margin tau (default {verify_defaults['tau']:g}: verify.tau of config/schema.yaml)",
    )
    v.add_argument(
        "--key-tau",
        type=float,
        default=None,
        help=f"margin of the key-specific test against the decoy marks (default "
        f"{verify_defaults['key_tau']:g}: verify.key_tau of config/schema.yaml)",
    )
    v.add_argument(
        "--alpha",
        type=float,
        default=None,
        help=f"significance level (default {verify_defaults['alpha']:g}: verify.alpha of "
        "config/schema.yaml)",
    )
    v.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="torch device for TorchScript models (ONNX runs on CPU; auto means CPU there)",
    )
    v.add_argument("--batch-size", type=int, default=64)
    v.add_argument(
        "--channels",
        type=int,
        choices=(1, 3),
        default=1,
        help="input channels the model takes; 3 repeats the grey channel (RGB models)",
    )
    v.add_argument(
        "--input-resolution",
        type=int,
        default=None,
        help="resize images (bilinear, antialiased) to this size before querying the model",
    )
    v.add_argument(
        "--format",
        choices=("auto", "torchscript", "onnx"),
        default="auto",
        help="model format (default: by extension)",
    )
    a = sub.add_parser(
        "audit",
        help="check a results/ tree against its provenance records",
        description="Check every artifact of a results tree against the provenance records, "
        "re-derive each verdict from its per_image.csv, look for owner secrets under release/ "
        "and compare the release tree with the release HDF5. Exit 0 clean, 1 findings, 2 "
        "unreadable input.",
    )
    a.add_argument("results", nargs="?", type=Path, default=Path("results"))
    a.add_argument("--out", type=Path, default=None, help="audit JSON (default RESULTS/audit.json)")
    a.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="working directory the records' paths are relative to (default: RESULTS/..)",
    )
    a.add_argument("--limit", type=int, default=50, help="findings printed (all in the JSON)")
    a.add_argument("--quiet", action="store_true", help="no progress bar")
    c = sub.add_parser("certificate", help="MedLocker certificates")
    csub = c.add_subparsers(dest="action", required=True)
    cv = csub.add_parser(
        "verify",
        help="check a copy of a MedLocker release against the owner's signed certificate",
        description="Check the Ed25519 signature of the certificate with the owner's public key, "
        "then that every certified image of the copy hashes to its certified locked image; with "
        "--originals and --logo, also re-render each from its original with the recorded "
        "parameters. Exit 0 valid, 1 refused, 2 bad input.",
    )
    cv.add_argument("--certificate", required=True, type=Path)
    cv.add_argument("--public-key", required=True, type=Path, help="owner's Ed25519 PEM key")
    cv.add_argument("--release", required=True, type=Path, help="the copy (medmark image HDF5)")
    cv.add_argument("--originals", type=Path, default=None, help="original images (HDF5)")
    cv.add_argument("--logo", type=Path, default=None, help="the logo PNG (with --originals)")
    cv.add_argument("--out", type=Path, default=None, help="report JSON")
    u = sub.add_parser(
        "unlock",
        help="restore the originals of a MedLocker release with the restore key",
        description="Decrypt each image's restore package (AES-GCM) and paste the original "
        "pixels back under the logo; the result is checked against the original's sha256. "
        "Exit 0 restored, 1 refused (wrong key, tampered, truncated or foreign package), 2 bad "
        "input.",
    )
    u.add_argument("--locked", required=True, type=Path, help="locked HDF5, or one PNG")
    u.add_argument("--packages", required=True, type=Path, help="package directory (or file)")
    u.add_argument("--key", required=True, type=Path, help="restore key (hex file)")
    u.add_argument("--out", required=True, type=Path, help="restored HDF5 (or PNG)")
    u.add_argument("--image-id", default=None, help="the image id of a single PNG")
    return parser


def _run_certificate(args: argparse.Namespace) -> int:
    import json

    from medmark.io import write_json_atomic
    from medmark.methods.medlocker.certificate import CertificateError
    from medmark.methods.medlocker.cli_ops import verify_certificate

    for flag in ("certificate", "public_key", "release", "originals", "logo"):
        path = getattr(args, flag)
        if path is not None and not path.is_file():
            raise DataFormatError(
                "no such file", file=str(path), field=f"--{flag.replace('_', '-')}"
            )
    try:
        report = verify_certificate(
            args.certificate, args.public_key, args.release, args.originals, args.logo
        )
    except CertificateError as e:
        print(f"medmark certificate verify: REFUSED: {e}", file=sys.stderr)
        return EXIT_REFUSED
    if args.out is not None:
        write_json_atomic(args.out, report)
    brief = {
        k: report[k]
        for k in ("n_certified", "n_checked", "missing", "changed", "rerender_mismatch")
    }
    if not report["ok"]:
        print(f"medmark certificate verify: REFUSED: {json.dumps(brief)}", file=sys.stderr)
        return EXIT_REFUSED
    print(f"valid: signature ok, {report['n_checked']} images match the certificate")
    return EXIT_OK


def _run_unlock(args: argparse.Namespace) -> int:
    from medmark.methods.medlocker.cli_ops import unlock_png, unlock_release
    from medmark.methods.medlocker.restore import PackageError

    for flag in ("locked", "packages", "key"):
        if not getattr(args, flag).exists():
            raise DataFormatError("no such file", file=str(getattr(args, flag)), field=f"--{flag}")
    check_outputs(args.out, {"the locked input": args.locked, "the packages": args.packages})
    try:
        if args.locked.suffix.lower() == ".png":
            if args.image_id is None:
                raise DataFormatError("a PNG needs its --image-id", field="--image-id")
            unlock_png(args.locked, args.packages, args.key, args.image_id, args.out)
            print(f"restored {args.image_id} -> {args.out}")
        else:
            counts = unlock_release(args.locked, args.packages, args.key, args.out)
            print(
                f"restored {counts['restored']} images ({counts['unchanged']} without a package "
                f"copied unchanged) -> {args.out}"
            )
    except PackageError as e:
        print(f"medmark unlock: REFUSED: {e}", file=sys.stderr)
        return EXIT_REFUSED
    return EXIT_OK


def _run_verify(args: argparse.Namespace) -> int:
    from medmark import __version__ as version
    from medmark.io import sha256_file
    from medmark.runtime import resolve_device
    from medmark.verify import (
        check_model_file,
        load_blackbox,
        load_owner_verification,
        verify_owner,
    )

    if args.batch_size < 1:
        raise DataFormatError(f"must be >= 1, got {args.batch_size}", field="--batch-size")
    if args.input_resolution is not None and args.input_resolution < 1:
        raise DataFormatError(
            f"must be >= 1, got {args.input_resolution}", field="--input-resolution"
        )
    if args.resolution is not None and args.resolution < 1:
        raise DataFormatError(f"must be >= 1, got {args.resolution}", field="--resolution")
    protected = {"the suspect model": args.model, "the owner directory": args.owner_dir}
    if args.verification_file is not None:
        protected["the verification file"] = args.verification_file
    check_outputs(args.out, protected)
    owner = load_owner_verification(args.owner_dir, args.resolution, args.verification_file)
    defaults = section_defaults("verify")
    tau = defaults["tau"] if args.tau is None else args.tau
    alpha = defaults["alpha"] if args.alpha is None else args.alpha
    key_tau = defaults["key_tau"] if args.key_tau is None else args.key_tau
    if not 0.0 <= tau < 1.0:
        raise DataFormatError(f"tau must be in [0, 1), got {tau}", field="--tau")
    if not 0.0 <= key_tau < 1.0:
        raise DataFormatError(f"key_tau must be in [0, 1), got {key_tau}", field="--key-tau")
    if not 0.0 < alpha <= 1.0:
        raise DataFormatError(f"alpha must be in (0, 1], got {alpha}", field="--alpha")
    is_onnx = args.format == "onnx" or (
        args.format == "auto" and args.model.suffix.lower() == ".onnx"
    )
    try:
        device = resolve_device("cpu" if is_onnx and args.device == "auto" else args.device)
    except RuntimeError as e:
        raise DataFormatError(str(e), field="--device") from e
    check_model_file(args.model)
    bb = load_blackbox(
        args.model,
        kind=args.format,
        device=device,
        batch_size=args.batch_size,
        input_resolution=args.input_resolution,
        output=args.output,
        channels=args.channels,
    )
    params = {
        "model": str(args.model),
        "model_sha256": sha256_file(args.model),
        "owner_dir": str(args.owner_dir),
        "method": owner.method,
        "verify_seed": owner.verify_seed,
        "verification_file": str(owner.verification_file),
        "verification_sha256": owner.verification_sha256,
        "channels": args.channels,
        "resolution": owner.resolution,
        "input_resolution": args.input_resolution,
        "output": args.output,
        "device": str(device),
        "tau_source": SCHEMA_SOURCE if args.tau is None else "--tau",
        "key_tau_source": SCHEMA_SOURCE if args.key_tau is None else "--key-tau",
        "alpha_source": SCHEMA_SOURCE if args.alpha is None else "--alpha",
        "medmark_version": version,
    }
    summary = verify_owner(
        bb,
        owner,
        tau=tau,
        alpha=alpha,
        key_tau=key_tau,
        hard_label=args.hard_label,
        params=params,
        out_summary=args.out,
        out_per_image=per_image_path(args.out),
        on_write_error=lambda e: DataFormatError(
            f"cannot write the verdict: {e}", file=str(args.out)
        ),
    )
    flags = f" flags={','.join(summary['flags'])}" if summary["flags"] else ""
    print(
        f"{summary['verdict']}: {summary['test']} p={summary['p_value']:.3g} "
        f"key_p={_key_p(summary)} rule={summary['verdict_rule'].replace(' ', '_')} "
        f"log10p={summary['log10_p']:.2f} dP={summary['delta_p']:.3f} wsr={summary['wsr']:.3f} "
        f"m={summary['m']} tau={tau:g} alpha={alpha:g}{flags} -> {args.out}"
    )
    return EXIT_OK


def _key_p(summary: dict) -> str:
    kt = summary.get("key_test")
    return "n/a" if not kt else f"{kt['p_value']:.3g}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medmark`` console script; returns the exit status."""
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "verify":
            return _run_verify(args)
        if args.command == "audit":
            from medmark.audit import audit_cli

            return audit_cli(args.results, args.out, args.workdir, args.limit, args.quiet)
        if args.command == "certificate":
            return _run_certificate(args)
        if args.command == "unlock":
            return _run_unlock(args)
    except DataFormatError as e:
        print(f"medmark {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse restricts choices


if __name__ == "__main__":
    sys.exit(main())
